"""`feedsvc replay`: read the Kafka audit trail back, verify it, re-publish it."""
