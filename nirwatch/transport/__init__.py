"""Kafka: client construction, topics, and finding or starting a broker for tests and the demo."""
