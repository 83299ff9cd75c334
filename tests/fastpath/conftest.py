import pytest

from fastpath.reference import ReferenceKernel

try:
    from fastpath.kernel import Kernel
except ImportError:  # the build failed: make every kernel-parametrized test fail, loudly
    Kernel = None


@pytest.fixture(params=["kernel", "reference"])
def kernel_class(request):
    """Each behaviour test runs against the compiled kernel and the reference evaluator."""
    if request.param == "reference":
        return ReferenceKernel
    assert Kernel is not None, "fastpath.kernel is not compiled"
    return Kernel
