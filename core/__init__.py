"""The ground floor: configuration, the wire contract, prompts and healing, confidence, rewards.

Everything else stands on it (`backend`, `trainer`, `lsp_server`, `simulate`, the command line);
it imports nothing of ours outside itself.
"""
