import os

# Nothing in the test suite may reach the Hugging Face Hub; with the Hub offline, a stray download fails fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
