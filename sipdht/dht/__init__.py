"""OpenDHT-compatible DHT: wire codec, sans-IO engine, asyncio node, simulated network."""
