"""The realtime engine: slots, the batched 80 ms tick, sessions, wire protocols and the server.

Wire protocols, sans I/O (pure parse/build functions shared by the server and the clients):
`moshi_protocol` (/api/chat), `kyutai_protocol` (/api/asr-streaming, /api/tts_streaming), `ogg` (page
framing), `auth` (API keys), `query` (query-string values), `errors` (ProtocolError and its close codes).

Engine and server: `frames` (the typed messages between network and engine), `scheduler` (admission,
eviction, input framing: the tick's plan), `engine` (the tick and its thread), `metrics` (tick timing,
Prometheus text), `session` (one /api/chat connection's protocol state), `server` (the websockets shell).
"""
