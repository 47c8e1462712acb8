import pytest
import torch

import winnow

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and winnow.build_info()["cuda_kernels"] else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
