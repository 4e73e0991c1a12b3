"""The messages on the Kafka topics: spectra, predictions, lab results and dead letters.

Each message type has one owner here: its schema, encoder, validator and decoder.
"""
