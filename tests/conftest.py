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
