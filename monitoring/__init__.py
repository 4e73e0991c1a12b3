"""Metrics, drift detectors, Prometheus rules, Alertmanager config and Grafana dashboards."""
