"""The contract between services: stream records, the Redis key layout, the scorer's HTTP models,
Redis helpers, the embedded Redis server, API keys and the settings every service's config
takes its defaults from. Torch-free; every service imports it."""
