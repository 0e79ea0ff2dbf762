"""The cases of the real-architecture zoo (``benchmarks/zoo.py``): healthy and sick models
built by torchvision, timm, Hugging Face ``transformers`` and torch itself.

Every model is built with random initialisation from a small config; nothing is
downloaded. A case builds ``(model, inputs, target, loss_fn)`` for one input size and
seed; ``expect`` is None for a healthy model, else the finding kinds of which one must be
an error. Watched cases (``train`` set) run a short training loop under ``gcu.watch``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# (model, inputs, target, loss_fn)
Built = tuple[nn.Module, Any, Any, Any]

VISION_SIZES = {"std": (2, 224), "small": (4, 64)}  # batch, image side
TEXT_SIZES = {"std": (4, 32), "small": (4, 12)}  # batch, sequence length
SPEECH_SIZES = {"std": (2, 16000), "small": (2, 4000)}  # batch, audio samples


@dataclass(frozen=True)
class Case:
    """One zoo entry.

    ``build(size, seed)`` returns (model, inputs, target, loss_fn) for ``gcu.check``; a
    ``train`` callable instead runs a watched loop and returns the report and the losses.
    """

    name: str
    source: str  # torchvision, timm, transformers, torch
    family: str  # cnn, vit, text, speech, ssm, rnn, mlp
    build: Callable[[str, int], Built]
    expect: tuple[str, ...] | None = None  # None: healthy
    sizes: tuple[str, ...] = ("std", "small")
    config: dict[str, Any] = field(default_factory=dict)
    train: Callable[[int, Any], tuple[Any, list[float]]] | None = None
    note: str = ""
    forbid: tuple[str, ...] = ()  # kinds that must not be errors (noise next to the real one)
    gate: bool = True  # False: borderline, reported but not part of the pass/fail verdict

    @property
    def healthy(self) -> bool:
        """True for a model that must give no error finding."""
        return self.expect is None


# --- inputs -------------------------------------------------------------------------


def _image(size: str, classes: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    batch, side = VISION_SIZES[size]
    return torch.randn(batch, 3, side, side), torch.randint(0, classes, (batch,))


def _vision(make: Callable[[int], nn.Module], classes: int = 1000) -> Callable[[str, int], Built]:
    """A classifier built by ``make(image_side)``, cross-entropy on random labels."""

    def build(size: str, seed: int) -> Built:
        torch.manual_seed(seed)
        model = make(VISION_SIZES[size][1])
        x, y = _image(size, classes)
        return model, x, y, F.cross_entropy

    return build


def _tv(name: str, **kwargs: Any) -> Callable[[str, int], Built]:
    import torchvision

    return _vision(lambda side: torchvision.models.get_model(name, weights=None, **kwargs))


def _tv_vit_small(side: int) -> nn.Module:
    """torchvision's VisionTransformer (vit_b_16's code) with ViT-S-like small dims."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(
        image_size=side, patch_size=16, num_layers=6, num_heads=6, hidden_dim=384, mlp_dim=1536
    )


def _timm(name: str, sized: bool = False, **kwargs: Any) -> Callable[[str, int], Built]:
    import timm

    def make(side: int) -> nn.Module:
        extra = {"img_size": side} if sized else {}
        return timm.create_model(name, pretrained=False, **extra, **kwargs)

    return _vision(make)


# --- transformers tiny configs --------------------------------------------------------

_TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 1000,
}


def _text(
    config_name: str, model_name: str, labels: str, **config: Any
) -> Callable[[str, int], Built]:
    """A transformers model from a tiny config; its own loss from ``labels``:
    'class' (sequence classification), 'lm' (next token), 'seq2seq'."""

    def build(size: str, seed: int) -> Built:
        import transformers

        torch.manual_seed(seed)
        cfg = getattr(transformers, config_name)(**config)
        model = getattr(transformers, model_name)(cfg)
        batch, length = TEXT_SIZES[size]
        ids = torch.randint(3, 1000, (batch, length))
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if labels == "class":
            inputs["labels"] = torch.randint(0, cfg.num_labels, (batch,))
        elif labels == "lm":
            inputs["labels"] = ids
        else:
            inputs["labels"] = torch.randint(3, 1000, (batch, max(4, length // 2)))
        return model, inputs, None, None

    return build


def _hf_vit(**overrides: Any) -> Callable[[str, int], Built]:
    def build(size: str, seed: int) -> Built:
        import transformers

        torch.manual_seed(seed)
        _batch, side = VISION_SIZES[size]
        cfg = transformers.ViTConfig(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=side,
            patch_size=16,
            num_labels=10,
            **overrides,
        )
        model = transformers.ViTForImageClassification(cfg)
        x, y = _image(size, 10)
        return model, {"pixel_values": x, "labels": y}, None, None

    return build


def _whisper(size: str, seed: int) -> Built:
    import transformers

    torch.manual_seed(seed)
    frames = {"std": 200, "small": 100}[size]
    cfg = transformers.WhisperConfig(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        vocab_size=1000,
        num_mel_bins=80,
        max_source_positions=frames // 2,
        max_target_positions=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    model = transformers.WhisperForConditionalGeneration(cfg)
    features = torch.randn(2, 80, frames)
    labels = torch.randint(3, 1000, (2, 12))
    return model, {"input_features": features, "labels": labels}, None, None


def _wav2vec2(size: str, seed: int) -> Built:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.Wav2Vec2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 2),
        conv_kernel=(10, 4, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_labels=3,
    )
    model = transformers.Wav2Vec2ForSequenceClassification(cfg)
    batch, samples = SPEECH_SIZES[size]
    inputs = {"input_values": torch.randn(batch, samples), "labels": torch.randint(0, 3, (batch,))}
    return model, inputs, None, None


# --- torch's own modules --------------------------------------------------------------


class RNNClassifier(nn.Module):
    """Embedding, one recurrent layer, a linear readout of the last step."""

    def __init__(self, kind: str = "rnn", hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind](
            32, hidden, batch_first=True
        )
        self.head = nn.Linear(hidden, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(ids))
        return self.head(out[:, -1])


def _rnn(kind: str, steps: dict[str, int]) -> Callable[[str, int], Built]:
    def build(size: str, seed: int) -> Built:
        torch.manual_seed(seed)
        model = RNNClassifier(kind)
        ids = torch.randint(0, 100, (8, steps[size]))
        return model, ids, torch.randint(0, 5, (8,)), F.cross_entropy

    return build


def _torch_mlp(activation: type[nn.Module], depth: int) -> Callable[[str, int], Built]:
    """torchvision.ops.MLP (a stack of Linear + activation, no skips)."""

    def build(size: str, seed: int) -> Built:
        from torchvision.ops import MLP

        torch.manual_seed(seed)
        model = MLP(64, [128] * depth + [10], activation_layer=activation)
        batch = {"std": 64, "small": 16}[size]
        return model, torch.randn(batch, 64), torch.randint(0, 10, (batch,)), F.cross_entropy

    return build


# --- sick variants: modifications of real architectures --------------------------------


def _modified(
    build: Callable[[str, int], Built], change: Callable[[nn.Module], None]
) -> Callable[[str, int], Built]:
    """``build``'s case with ``change`` applied to the model (under no_grad)."""

    def sick(size: str, seed: int) -> Built:
        model, inputs, target, loss_fn = build(size, seed)
        with torch.no_grad():
            change(model)
        return model, inputs, target, loss_fn

    return sick


def _init_weights(std: float, types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> Callable:
    def change(model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, types):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()

    return change


def _scale_weights(factor: float, types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> Callable:
    def change(model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, types):
                module.weight.mul_(factor)

    return change


def _norm_bias(value: float) -> Callable:
    """Every BatchNorm's bias set to ``value``: the activation after it sees x + value."""

    def change(model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.fill_(value)

    return change


def _replace_activations(old: tuple[type, ...], new: Callable[[], nn.Module]) -> Callable:
    def change(model: nn.Module) -> None:
        for parent in list(model.modules()):
            for child_name, child in parent.named_children():
                if isinstance(child, old):
                    setattr(parent, child_name, new())

    return change


def _se_bias(value: float) -> Callable:
    """The squeeze-excitation gates' expanding conv bias set to ``value``."""

    def change(model: nn.Module) -> None:
        from torchvision.ops import SqueezeExcitation

        found = 0
        for module in model.modules():
            if isinstance(module, SqueezeExcitation):
                module.fc2.bias.fill_(value)
                found += 1
        assert found, "no SqueezeExcitation module"

    return change


def _nan_weight(module_name: str) -> Callable:
    def change(model: nn.Module) -> None:
        model.get_submodule(module_name).weight.view(-1)[0] = float("nan")

    return change


def _bert_pooler_saturated(model: nn.Module) -> None:
    model.bert.pooler.dense.weight.normal_(0.0, 10.0)


def _detach_after(module_name: str) -> Callable:
    """The output of ``module_name`` detached: everything before it gets no gradient."""

    def change(model: nn.Module) -> None:
        model.get_submodule(module_name).register_forward_hook(
            lambda _module, _inputs, output: output.detach()
        )

    return change


# --- watched training -------------------------------------------------------------------


def _train_loop(lr: float, steps: int = 8, momentum: float = 0.0) -> Callable:
    """A short SGD loop on a CIFAR-sized torchvision resnet18, watched."""

    def run(seed: int, config: Any) -> tuple[Any, list[float]]:
        import torchvision

        import gradcheckup as gcu

        torch.manual_seed(seed)
        model = torchvision.models.resnet18(weights=None, num_classes=10)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
        losses = []
        with gcu.watch(model, optimizer=optimizer, config=config) as monitor:
            for _ in range(steps):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        return monitor.report(), losses

    return run


def _train_bert(lr: float, steps: int = 8) -> Callable:
    """A short AdamW loop on a tiny BERT classifier, watched (ordinary training)."""

    def run(seed: int, config: Any) -> tuple[Any, list[float]]:
        import gradcheckup as gcu

        model, inputs, _, _ = _text(
            "BertConfig", "BertForSequenceClassification", "class", **_TINY, num_labels=3
        )("std", seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        losses = []
        with gcu.watch(model, optimizer=optimizer, config=config) as monitor:
            for _ in range(steps):
                optimizer.zero_grad()
                loss = model(**inputs).loss
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        return monitor.report(), losses

    return run


def _no_build(size: str, seed: int) -> Built:
    raise RuntimeError("a watched case has no single-pass build")


# --- the zoo ----------------------------------------------------------------------------


def healthy_cases() -> list[Case]:
    """At least 30 stock architectures at initialisation, plus ordinary watched training."""
    tv = [
        ("resnet18", {}),
        ("resnet50", {}),
        ("resnet101", {}),
        ("resnet152", {}),
        ("wide_resnet50_2", {}),
        ("resnext50_32x4d", {}),
        ("densenet121", {}),
        ("mobilenet_v2", {}),
        ("mobilenet_v3_small", {}),
        ("efficientnet_b0", {}),
        ("regnet_y_400mf", {}),
        ("shufflenet_v2_x1_0", {}),
        ("squeezenet1_1", {}),
        ("vgg11", {}),
        ("vgg11_bn", {}),
        ("swin_t", {}),
        ("convnext_tiny", {}),
    ]
    cases = [Case(f"tv_{name}", "torchvision", _family(name), _tv(name, **kw)) for name, kw in tv]
    cases.append(
        Case(
            "tv_vit_s_16",
            "torchvision",
            "vit",
            _vision(_tv_vit_small),
            note="VisionTransformer(patch 16, 6 layers, 384 wide); zero-init head",
        )
    )
    timm_models = [
        ("deit_tiny_patch16_224", True),
        ("resnet18d", False),
        ("efficientnet_b0", False),
        ("mobilevitv2_050", False),
        ("convnext_atto", False),
        ("levit_128s", True),
        ("poolformer_s12", False),
        ("regnetx_002", False),
        ("ghostnet_100", False),
        ("mixer_s16_224", True),
        ("repvgg_a0", False),
        ("edgenext_xx_small", False),
    ]
    cases += [
        Case(f"timm_{name}", "timm", _family(name), _timm(name, sized=sized))
        for name, sized in timm_models
    ]
    cases += _transformers_healthy()
    cases += [
        Case("torch_lstm", "torch", "rnn", _rnn("lstm", {"std": 20, "small": 8})),
        Case("torch_gru", "torch", "rnn", _rnn("gru", {"std": 20, "small": 8})),
        Case(
            "tv_mlp_relu_6",
            "torchvision",
            "mlp",
            _torch_mlp(nn.ReLU, 6),
            gate=False,
            note="borderline: default init loses ~0.4x per layer, ~40% dead at the last ReLU",
        ),
        Case(
            "train_resnet18_sgd",
            "torchvision",
            "train",
            _no_build,
            sizes=("std",),
            train=_train_loop(0.05, steps=10, momentum=0.9),
            note="SGD lr 0.05 m 0.9, 10 steps",
        ),
        Case(
            "train_bert_adamw",
            "transformers",
            "train",
            _no_build,
            sizes=("std",),
            train=_train_bert(1e-3, steps=10),
            note="AdamW lr 1e-3, 10 steps",
        ),
    ]
    return cases


def _transformers_healthy() -> list[Case]:
    gqa = dict(_TINY, num_key_value_heads=2)
    return [
        Case(
            "hf_bert",
            "transformers",
            "text",
            _text("BertConfig", "BertForSequenceClassification", "class", **_TINY, num_labels=3),
        ),
        Case(
            "hf_roberta",
            "transformers",
            "text",
            _text(
                "RobertaConfig", "RobertaForSequenceClassification", "class", **_TINY, num_labels=3
            ),
        ),
        Case(
            "hf_gpt2",
            "transformers",
            "text",
            _text(
                "GPT2Config",
                "GPT2LMHeadModel",
                "lm",
                n_embd=64,
                n_layer=4,
                n_head=4,
                vocab_size=1000,
                n_positions=128,
                bos_token_id=1,
                eos_token_id=2,
            ),
        ),
        Case(
            "hf_t5",
            "transformers",
            "text",
            _text(
                "T5Config",
                "T5ForConditionalGeneration",
                "seq2seq",
                d_model=64,
                d_kv=16,
                d_ff=128,
                num_layers=2,
                num_decoder_layers=2,
                num_heads=4,
                vocab_size=1000,
                decoder_start_token_id=0,
            ),
        ),
        Case(
            "hf_llama",
            "transformers",
            "text",
            _text("LlamaConfig", "LlamaForCausalLM", "lm", **gqa),
        ),
        Case(
            "hf_mistral",
            "transformers",
            "text",
            _text("MistralConfig", "MistralForCausalLM", "lm", **gqa),
        ),
        Case(
            "hf_qwen2",
            "transformers",
            "text",
            _text("Qwen2Config", "Qwen2ForCausalLM", "lm", **gqa),
        ),
        Case("hf_vit", "transformers", "vit", _hf_vit()),
        Case("hf_whisper", "transformers", "speech", _whisper),
        Case("hf_wav2vec2", "transformers", "speech", _wav2vec2),
        Case(
            "hf_mamba",
            "transformers",
            "ssm",
            _text(
                "MambaConfig",
                "MambaForCausalLM",
                "lm",
                hidden_size=64,
                num_hidden_layers=4,
                vocab_size=1000,
                state_size=8,
            ),
        ),
    ]


def _family(name: str) -> str:
    vit_like = ("vit", "deit", "swin", "levit", "mixer", "mobilevit", "edgenext")
    return "vit" if any(part in name for part in vit_like) else "cnn"


def sick_cases() -> list[Case]:
    """At least 15 broken variants of real architectures, each with the kind it must raise."""
    bert = _text("BertConfig", "BertForSequenceClassification", "class", **_TINY, num_labels=3)
    return [
        Case(
            "sick_vgg11_std0.01",
            "torchvision",
            "cnn",
            _modified(_tv("vgg11"), _init_weights(0.01)),
            ("vanishing",),
            note="all conv/linear weights N(0, 0.01)",
        ),
        Case(
            "sick_vgg16_x3",
            "torchvision",
            "cnn",
            _modified(_tv("vgg16"), _scale_weights(3.0)),
            ("exploding",),
            note="vgg16 (no BN) default init, weights x3",
        ),
        Case(
            "sick_vgg16_sigmoid",
            "torchvision",
            "cnn",
            _modified(_tv("vgg16"), _replace_activations((nn.ReLU,), nn.Sigmoid)),
            ("vanishing",),
            note="ReLU -> Sigmoid, no skips",
        ),
        Case(
            "sick_mlp_sigmoid_20",
            "torchvision",
            "mlp",
            _torch_mlp(nn.Sigmoid, 20),
            ("vanishing",),
            note="torchvision.ops.MLP, 20 sigmoid layers",
        ),
        Case(
            "sick_bert_init2.0",
            "transformers",
            "text",
            _text(
                "BertConfig",
                "BertForSequenceClassification",
                "class",
                **_TINY,
                num_labels=3,
                initializer_range=2.0,
            ),
            # At this size the signal grows only in the pooler and classifier and stays
            # flat through the post-LN encoder (no depth metric separates it, see the
            # calibration); what breaks is the pooler's tanh, saturated by the weights.
            ("exploding", "saturation"),
            note="initializer_range=2.0",
        ),
        Case(
            "sick_resnet18_dead_relu",
            "torchvision",
            "cnn",
            _modified(_tv("resnet18"), _norm_bias(-5.0)),
            ("dead_relu",),
            note="every BN bias -5 (ReLU)",
        ),
        Case(
            "sick_vgg11_bn_dead_relu",
            "torchvision",
            "cnn",
            _modified(_tv("vgg11_bn"), _norm_bias(-5.0)),
            ("dead_relu",),
            note="every BN bias -5 (ReLU inplace)",
        ),
        Case(
            "sick_mobilenet_v2_dead_relu6",
            "torchvision",
            "cnn",
            _modified(_tv("mobilenet_v2"), _norm_bias(-5.0)),
            ("dead_relu",),
            note="every BN bias -5 (ReLU6)",
        ),
        Case(
            "sick_mobilenet_v3_dead_hardswish",
            "torchvision",
            "cnn",
            _modified(_tv("mobilenet_v3_small"), _norm_bias(-10.0)),
            ("dead_relu",),
            note="every BN bias -10 (Hardswish < -3 is flat 0)",
        ),
        Case(
            "sick_mobilenet_v3_se_hardsigmoid",
            "torchvision",
            "cnn",
            _modified(_tv("mobilenet_v3_small"), _se_bias(20.0)),
            ("saturation", "dead_relu"),
            note="SE fc2 bias +20 (Hardsigmoid flat at 1)",
        ),
        Case(
            "sick_efficientnet_b0_se_sigmoid",
            "torchvision",
            "cnn",
            _modified(_tv("efficientnet_b0"), _se_bias(20.0)),
            ("saturation",),
            note="SE fc2 bias +20 (sigmoid = 1.0)",
        ),
        Case(
            "sick_bert_pooler_tanh",
            "transformers",
            "text",
            _modified(bert, _bert_pooler_saturated),
            ("saturation",),
            note="pooler weights N(0, 10)",
        ),
        Case(
            "sick_resnet18_nan",
            "torchvision",
            "cnn",
            _modified(_tv("resnet18"), _nan_weight("layer2.0.conv1")),
            ("nonfinite",),
            note="one NaN weight in layer2.0.conv1",
            forbid=("dead_relu", "saturation"),
        ),
        Case(
            "sick_gpt2_nan",
            "transformers",
            "text",
            _modified(
                _text(
                    "GPT2Config",
                    "GPT2LMHeadModel",
                    "lm",
                    n_embd=64,
                    n_layer=4,
                    n_head=4,
                    vocab_size=1000,
                    n_positions=128,
                    bos_token_id=1,
                    eos_token_id=2,
                ),
                _nan_weight("transformer.h.1.mlp.c_fc"),
            ),
            ("nonfinite",),
            note="one NaN weight in h.1.mlp.c_fc",
            forbid=("dead_relu", "saturation"),
        ),
        Case(
            "sick_resnet18_detached",
            "torchvision",
            "cnn",
            _modified(_tv("resnet18"), _detach_after("layer2")),
            ("no_gradient",),
            note="layer2 output detached",
        ),
        Case(
            "sick_rnn_100_steps",
            "torch",
            "rnn",
            _rnn("rnn", {"std": 100, "small": 100}),
            ("vanishing_through_time",),
            sizes=("std",),
            note="nn.RNN(tanh) over 100 steps",
        ),
        Case(
            "sick_train_lr5",
            "torchvision",
            "train",
            _no_build,
            ("exploding", "divergence", "diverging"),
            sizes=("std",),
            train=_train_loop(5.0),
            note="SGD lr 5.0, no clipping, no max_grad_norm",
        ),
        Case(
            "sick_train_lr5_bound",
            "torchvision",
            "train",
            _no_build,
            ("missing_clipping",),
            sizes=("std",),
            config={"max_grad_norm": 1.0},
            train=_train_loop(5.0),
            note="SGD lr 5.0, max_grad_norm=1.0, no clipping",
        ),
    ]


def all_cases() -> list[Case]:
    """Healthy cases first, then sick ones."""
    return healthy_cases() + sick_cases()
