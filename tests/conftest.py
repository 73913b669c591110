import os

# Triton kernels run under the interpreter on machines without a GPU. This must be set before
# any @triton.jit function is defined, i.e. before headwater.kernels is imported.
if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        _has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing is reported by the tests themselves
        _has_cuda = False
    if not _has_cuda:
        os.environ["TRITON_INTERPRET"] = "1"

import pytest

from tiny_models import build_tiny_llama, build_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizer):
    return build_tiny_llama(tiny_tokenizer)


@pytest.fixture()
def saved_model(tmp_path, tiny_llama, tiny_tokenizer):
    """The tiny Llama and its tokenizer saved as a transformers model directory."""
    path = tmp_path / "m0"
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
