"""The realtime engine: slots, the batched 80 ms tick, sessions, wire protocols and the server."""
