"""The contract between services: stream records, the Redis key layout, the scorer's HTTP models,
Redis helpers, the embedded Redis server and API keys. Torch-free; every service imports it."""
