"""The multistream audio language model (temporal + depth transformer), its configs and loading."""
