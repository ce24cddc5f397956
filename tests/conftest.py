import pytest
import torch


@pytest.fixture(scope="session")
def x86_profile():
    from tvm_mpq.hardware import load_profile

    return load_profile("x86_avx2")


class ToyNet(torch.nn.Module):
    """Every construct the analysis must handle, small: conv+BN, depthwise, grouped, residual add,
    a shared input, an unsupported conv1d, linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = torch.nn.Conv2d(8, 8, 1, groups=2)
        self.branch_a = torch.nn.Conv2d(8, 4, 1)
        self.branch_b = torch.nn.Conv2d(8, 4, 1)
        self.seq = torch.nn.Conv1d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = h + self.grouped(torch.relu(self.dw(h)))
        z = torch.cat([self.branch_a(h), self.branch_b(h)], dim=1)
        s = self.seq(z.flatten(2))
        return self.fc(s.mean(dim=2))


@pytest.fixture
def toy_net():
    return ToyNet().eval(), (torch.randn(1, 3, 16, 16),)
