import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """archnet's tests run many small ops; on 2 shared cores torch's thread pool costs more than
    it gives (measured 15x on a 256x4608 reduction), so run them on one thread and restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
