import pytest
import torch

import winnow

# Every device test runs on both: the CUDA cases are skipped (and say so) where no GPU is
# visible, and fail where a GPU is visible but winnow was built without its CUDA kernels, so
# that a GPU run can never pass by silently leaving the CUDA paths out.
DEVICES = ["cpu", "cuda"]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device visible")
        if not winnow.build_info()["cuda_kernels"]:
            pytest.fail("a CUDA device is visible but winnow was built without its CUDA kernels "
                        "(rebuild with WINNOW_CUDA=1 and a CUDA build of torch)")
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
