import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small ops on 2 shared cores: torch's thread pool costs more than it gives."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
