"""The model: loading (Hugging Face, GGUF -> cached safetensors), decoder-block discovery,
left-padded batching, KV-cache helpers that hold on every transformers version, and greedy
decoding that tells the steering hooks where the prompt ends."""
