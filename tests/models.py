"""The model zoo shared by the tests: sick models that must be flagged and healthy
standard architectures that must not be."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gradcheckup.examples import SigmoidChain

# SigmoidChain (seed 002's chain) is packaged for `gradcheckup report --example`.
__all__ = ["SigmoidChain"]

# --- sick -------------------------------------------------------------------------------


def sigmoid_mlp(depth: int = 20, width: int = 64, classes: int = 10) -> nn.Sequential:
    """The textbook vanishing case: sigmoid between Linear layers (default init)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def linear_chain(depth: int = 20, width: int = 32, gain: float = 2.0) -> nn.Sequential:
    """Linear layers with orthogonal weights times ``gain``: every layer multiplies the
    backward signal by exactly ``gain``."""
    layers = []
    for _ in range(depth):
        layer = nn.Linear(width, width, bias=False)
        nn.init.orthogonal_(layer.weight, gain=gain)
        layers.append(layer)
    return nn.Sequential(*layers)


class SqrtAtZero(nn.Module):
    """Identity in forward whose backward is infinite: d sqrt(u)/du at u = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sqrt(x - x.detach())


def nonfinite_model(width: int = 8) -> nn.Sequential:
    """Non-finite gradients are born between 'first' and 'middle'."""
    return nn.Sequential(
        nn.Linear(width, width),  # 0: receives inf/NaN
        SqrtAtZero(),  # 1
        nn.Linear(width, width),  # 2: finite
        nn.Linear(width, 2),  # 3: finite
    )


def biased_linear(in_features: int, units: int, dead_fraction: float) -> nn.Linear:
    """A Linear whose bias pins exactly ``dead_fraction`` of its units below zero for
    any input of modest size (weights are tiny, biases are -1 or +1)."""
    layer = nn.Linear(in_features, units)
    dead = round(units * dead_fraction)
    with torch.no_grad():
        layer.weight.normal_(0.0, 1e-3)
        layer.bias.fill_(1.0)
        layer.bias[:dead] = -1.0
    return layer


# --- healthy ------------------------------------------------------------------------------


def he_relu_mlp(
    depth: int = 6, width: int = 128, in_features: int = 32, classes: int = 10
) -> nn.Sequential:
    layers: list[nn.Module] = []
    features = in_features
    for _ in range(depth):
        layer = nn.Linear(features, width)
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
        layers += [layer, nn.ReLU()]
        features = width
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    """Pre-norm residual MLP blocks: x + W2 relu(W1 LN(x))."""

    def __init__(
        self, depth: int = 8, width: int = 64, in_features: int = 32, classes: int = 10
    ) -> None:
        super().__init__()
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, width * 2),
                nn.ReLU(),
                nn.Linear(width * 2, width),
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x))


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-style CNN: BatchNorm, in-place ReLU, strided stages, skip connections."""

    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.stages = nn.Sequential(
            BasicBlock(width, width, 1),
            BasicBlock(width, width, 1),
            BasicBlock(width, width * 2, 2),
            BasicBlock(width * 2, width * 2, 1),
            BasicBlock(width * 2, width * 4, 2),
            BasicBlock(width * 4, width * 4, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(x))).flatten(1))


class TransformerClassifier(nn.Module):
    def __init__(
        self, vocab: int = 100, d_model: int = 64, layers: int = 4, classes: int = 5
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.randn(1, 32, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead=4, dim_feedforward=128, batch_first=True, dropout=0.1
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[:, : tokens.shape[1]]
        return self.head(self.encoder(x).mean(dim=1))


class RecurrentClassifier(nn.Module):
    def __init__(
        self, cell: str = "lstm", vocab: int = 100, hidden: int = 64, classes: int = 5
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        rnn_type = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn_type(hidden, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(self.embed(tokens))
        return self.head(output[:, -1])


class SelfAttention(nn.Module):
    """BERT-style attention with separate query/key/value projections (their query/key
    gradients are ~1e-6 of the rest at initialisation: a known false-alarm trap)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        for module in (self.query, self.key, self.value, self.output):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        head_dim = hidden // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, head_dim).transpose(1, 2)

        scores = split(self.query(x)) @ split(self.key(x)).transpose(-1, -2) / math.sqrt(head_dim)
        scores = scores + (1.0 - mask[:, None, None, :]) * -10000.0
        context = (
            (scores.softmax(-1) @ split(self.value(x)))
            .transpose(1, 2)
            .reshape(batch, length, hidden)
        )
        return self.norm(x + self.output(context))


class TinyBert(nn.Module):
    """Hugging Face-style: keyword inputs, a dict output with logits (and loss if labels)."""

    def __init__(
        self, vocab: int = 100, hidden: int = 64, layers: int = 2, classes: int = 3
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(64, hidden)
        self.embed_norm = nn.LayerNorm(hidden)
        self.attention = nn.ModuleList(SelfAttention(hidden, heads=4) for _ in range(layers))
        self.intermediate = nn.ModuleList(nn.Linear(hidden, hidden * 4) for _ in range(layers))
        self.ffn_out = nn.ModuleList(nn.Linear(hidden * 4, hidden) for _ in range(layers))
        self.ffn_norm = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.classifier = nn.Linear(hidden, classes)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and not isinstance(
                module, SelfAttention
            ):
                nn.init.normal_(module.weight, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        for attention, up, down, norm in zip(
            self.attention, self.intermediate, self.ffn_out, self.ffn_norm, strict=False
        ):
            x = attention(x, attention_mask.float())
            x = norm(x + down(F.gelu(up(x))))
        logits = self.classifier(x[:, 0])
        output = {"logits": logits, "hidden_states": x}
        if labels is not None:
            output["loss"] = F.cross_entropy(logits, labels)
        return output


def tiny_bert_inputs(batch: int = 8, length: int = 16, vocab: int = 100) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[: batch // 2, length // 2 :] = 0
    return {
        "input_ids": torch.randint(0, vocab, (batch, length), generator=generator),
        "attention_mask": mask,
        "labels": torch.randint(0, 3, (batch,), generator=generator),
    }
