"""sipdht: call anyone by a cryptographic identity over an OpenDHT-compatible DHT."""

__version__ = "0.1.0"
