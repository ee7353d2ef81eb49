"""Architectures the graph tests prune (tests/test_graph*.py): each with example inputs and the
granularities it offers, built with non-trivial BatchNorm statistics."""

import torch
from torch import nn

from invariants import mlp



class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            projection = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.shortcut = nn.Sequential(projection, nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class MiniResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 8, 1))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def grouped_net():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),  # depthwise
        nn.Conv2d(16, 24, 1), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1, groups=4), nn.ReLU(),  # grouped
        nn.Conv2d(24, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 5, 1)
        self.mix, self.fc = nn.Conv2d(11, 8, 3), nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(torch.relu(self.mix(x)).mean(dim=(2, 3)))


class RNNClassifier(nn.Module):
    def __init__(self, kind=nn.LSTM, use_state=False, bidirectional=False):
        super().__init__()
        self.pre = nn.Linear(28, 28)
        self.rnn = kind(28, 32, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(64 if bidirectional else 32, 10)
        self.use_state = use_state

    def forward(self, x):
        out, state = self.rnn(torch.tanh(self.pre(x)))
        hidden = state[0] if isinstance(state, tuple) else state
        return self.fc(hidden[-1] if self.use_state else out[:, -1])


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


IMAGE = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
CASES = {
    "mlp": (lambda: mlp(seed=None), torch.randn(5, 20), ["neuron"]),
    "lenet": (LeNet, torch.randn(3, 1, 28, 28), ["channel", "neuron"]),
    "resnet": (MiniResNet, IMAGE, ["channel"]),
    "grouped": (grouped_net, IMAGE, ["channel"]),
    "concat": (ConcatNet, IMAGE, ["channel"]),
    "lstm": (RNNClassifier, torch.randn(3, 7, 28), ["lstm-unit", "neuron"]),
    "lstm-h_n": (lambda: RNNClassifier(use_state=True), torch.randn(3, 7, 28), ["lstm-unit"]),
    "gru": (lambda: RNNClassifier(nn.GRU), torch.randn(3, 7, 28), ["lstm-unit"]),
    "rnn-tanh": (lambda: RNNClassifier(nn.RNN, use_state=True), torch.randn(3, 7, 28), ["lstm-unit"]),
    "bilstm": (lambda: RNNClassifier(bidirectional=True), torch.randn(3, 7, 28), ["lstm-unit"]),
    "transformer": (TinyTransformer, torch.randn(2, 5, 6), ["neuron"]),
}


def build(case, seed=0):
    """A model with non-trivial BatchNorm affine parameters and running statistics, in eval."""
    factory, inputs, _ = CASES[case]
    torch.manual_seed(seed)
    model = factory()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    with torch.no_grad():
        for _ in range(3):
            model(inputs + 0.5 * torch.randn_like(inputs))
    return model.eval(), inputs


def outputs(model, inputs):
    with torch.no_grad():
        return model.eval()(inputs)


def snapshot(model):
    """A copy of the model's state_dict, to check later that nothing changed."""
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
