"""The service: sources -> publisher -> PUB fan-out, with the sync handler, the Kafka mirror and
observability (observe/) beside it. Clients never import this package."""
