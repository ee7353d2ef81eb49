"""A learned mask predictor: a small network that reads per-weight features (|w|, |dL/dw|,
|w * dL/dw|, layer statistics, position; see ``prunekit.predictor_features``) and predicts
whether a strong but slow oracle (iterative pruning with fine-tuning, say) keeps each weight.
Trained once on one model's oracle mask, it prunes other layers, seeds and models in one shot:

    predictor = MaskPredictor().fit(dense_model, oracle_masks, data=loader)
    predictor.save("predictor.pt")
    pruner = Pruner(other_model, "predictor", 0.9, scope="global", data=loader,
                    predictor=MaskPredictor.load("predictor.pt"))
    pruner.step()

Its scores are keep-probabilities, comparable across layers, so global scope works. A predictor
knows only the layer kinds it was fitted on: any other layer is refused before the model changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import atomic_save
from prunekit.masking import named_effective_parameters, split_name
from prunekit.predictor_features import FEATURE_KINDS, FEATURE_NAMES, LayerInput, layer_features, layer_kind
from prunekit.state import seeded_rng
from prunekit.stats import LossFn, collect_gradient_stats
from prunekit.targets import ExcludeItem, resolve_targets
from prunekit.types import Evidence

FORMAT = "prunekit-mask-predictor"
VERSION = 1


@dataclass(frozen=True)
class PredictorConfig:
    """The predictor network and how it is trained: hidden layer widths, epochs over all
    weights, minibatch size, Adam learning rate, seed (initial weights and shuffling)."""

    hidden: tuple[int, ...] = (32, 32)
    epochs: int = 20
    batch_size: int = 2048
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        for name in ("epochs", "batch_size", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "seed" else 1):
                raise PrunekitError(f"PredictorConfig({name}=...) must be an int >= {0 if name == 'seed' else 1}; "
                                    f"got {value!r}")
        if not all(isinstance(width, int) and not isinstance(width, bool) and width >= 1 for width in self.hidden):
            raise PrunekitError(f"PredictorConfig(hidden=...) is a tuple of layer widths >= 1, e.g. (32, 32); "
                                f"got {self.hidden!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise PrunekitError(f"PredictorConfig(lr=...) must be a positive number; got {self.lr!r}")


def _network(config: PredictorConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = len(FEATURE_NAMES)
    for hidden in config.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 1))


class MaskPredictor:
    """Predicts keep-probabilities of single weights of Linear and Conv2d layers.

    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> data = [(torch.randn(16, 6), torch.randint(0, 3, (16,)))]
    >>> keep = {name: w.abs() > w.abs().median() for name, w in model.named_parameters() if name.endswith("weight")}
    >>> predictor = MaskPredictor(PredictorConfig(epochs=5)).fit(model, keep, data)
    >>> predictor.kinds, predictor.predict(model, data)["0.weight"].shape
    (('linear',), torch.Size([8, 6]))
    """

    def __init__(self, config: PredictorConfig | None = None) -> None:
        self.config = PredictorConfig() if config is None else config
        if not isinstance(self.config, PredictorConfig):
            raise PrunekitError(f"config must be a PredictorConfig, got {type(config).__name__}")
        self.network = _network(self.config)
        self.kinds: tuple[str, ...] = ()  # the layer kinds it was fitted on; empty: not fitted
        self.feature_mean = torch.zeros(len(FEATURE_NAMES))
        self.feature_std = torch.ones(len(FEATURE_NAMES))

    @property
    def fitted(self) -> bool:
        """True once fitted (or loaded)."""
        return bool(self.kinds)

    # ------------------------------------------------------------------ features

    def check_model(self, model: nn.Module, names: Iterable[str]) -> None:
        """Refuse, naming them, weights of a kind this predictor has no features for or was not
        fitted on. Touches nothing."""
        if not self.fitted:
            raise PrunekitError("this MaskPredictor has not been fitted: call predictor.fit(model, keep_masks, data) "
                                "or use MaskPredictor.load(path)")
        _check_kinds(model, names, self.kinds)

    def features(self, model: nn.Module, data: Iterable, names: Sequence[str] | None = None, *,
                 loss_fn: LossFn | None = None, num_batches: int = 8) -> dict[str, torch.Tensor]:
        """``{weight name: (weights, features) tensor}`` of `model`'s prunable weights (or `names`),
        gradients averaged over up to `num_batches` batches of `data`."""
        names = list(resolve_targets(model) if names is None else names)
        _check_kinds(model, names, FEATURE_KINDS)
        gradients = collect_gradient_stats(model, data, names, loss_fn, num_batches)
        weights = dict(named_effective_parameters(model))
        return layer_features([LayerInput(name, layer_kind(model, name), weights[name], gradients[name])
                               for name in names])

    # ------------------------------------------------------------------ training

    def fit(self, model: nn.Module, keep_masks: Mapping[str, torch.Tensor], data: Iterable, *,
            loss_fn: LossFn | None = None, num_batches: int = 8) -> MaskPredictor:
        """Learn to predict `keep_masks` (``{weight name: bool tensor, True = kept}``, e.g. an
        oracle's final masks) from the features of `model` (the dense model the oracle started
        from) on `data`. Returns self. Weights `keep_masks` does not name are not used."""
        names = _check_labels(model, keep_masks)
        features = self.features(model, data, names, loss_fn=loss_fn, num_batches=num_batches)
        return self.fit_features(features, keep_masks, {layer_kind(model, name) for name in names})

    def fit_features(self, features: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
                     kinds: Iterable[str]) -> MaskPredictor:
        """Fit on feature tables (as ``features`` returns) and their bool keep labels; `kinds` are
        the layer kinds they come from. Returns self."""
        missing = [name for name in labels if name not in features or features[name].shape[0] != labels[name].numel()]
        if missing or not labels:
            raise PrunekitError(f"every label needs a feature table with one row per weight; none fits for {missing}"
                                if labels else "no labels to fit on: pass {weight name: bool keep-mask}")
        kinds = set(kinds)
        if not kinds or not kinds <= set(FEATURE_KINDS):
            raise PrunekitError(f"kinds must name the layer kinds the features come from, among {FEATURE_KINDS}; "
                                f"got {sorted(kinds)}")
        inputs = torch.cat([features[name] for name in labels])
        targets = torch.cat([labels[name].reshape(-1).float() for name in labels])
        self.feature_mean = inputs.mean(dim=0)
        self.feature_std = inputs.std(dim=0, unbiased=False).clamp_min(1e-6)
        self.network = _network(self.config)
        _train(self.network, (inputs - self.feature_mean) / self.feature_std, targets, self.config)
        self.kinds = tuple(sorted(set(kinds)))
        return self

    # ------------------------------------------------------------------ predicting

    def probabilities(self, features: Mapping[str, torch.Tensor],
                      shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
        """Keep-probabilities from feature tables, each reshaped to ``shapes[name]``."""
        self.network.eval()
        with torch.no_grad(), _one_thread():
            return {name: torch.sigmoid(self.network((table - self.feature_mean) / self.feature_std).double())
                    .reshape(tuple(shapes[name])) for name, table in features.items()}

    def predict(self, model: nn.Module, data: Iterable, *, exclude: Iterable[ExcludeItem] = (),
                loss_fn: LossFn | None = None, num_batches: int = 8) -> dict[str, torch.Tensor]:
        """Keep-probabilities of every prunable weight of `model` (minus `exclude`), shaped like it."""
        names = resolve_targets(model, exclude)
        self.check_model(model, names)
        features = self.features(model, data, names, loss_fn=loss_fn, num_batches=num_batches)
        shapes = {name: tensor.shape for name, tensor in named_effective_parameters(model)}
        return self.probabilities(features, shapes)

    def predict_evidence(self, model: nn.Module, evidence: Mapping[str, Evidence]) -> dict[str, torch.Tensor]:
        """Keep-probabilities from unstructured evidence (weights and their observed mean
        |dL/dw|), as the pruning pipeline gathers it; `evidence` in model order."""
        self.check_model(model, evidence)
        missing = [name for name, item in evidence.items() if item.signal is None or item.signal.grad_abs is None]
        if missing:
            raise PrunekitError(f"the mask predictor reads each weight's gradient on data, which is missing for "
                                f"{', '.join(missing)}; pass data=<batches of (inputs, targets)>")
        layers = [LayerInput(name, layer_kind(model, name), item.weight, item.signal.grad_abs)
                  for name, item in evidence.items()]
        return self.probabilities(layer_features(layers), {name: item.shape for name, item in evidence.items()})

    # ------------------------------------------------------------------ saving

    def describe(self) -> dict:
        """What it was fitted on and a fingerprint of its weights (stored in a Pruner's state).

        >>> MaskPredictor().describe()["kinds"]
        []
        """
        digest = hashlib.sha1()
        for tensor in (*self.network.state_dict().values(), self.feature_mean, self.feature_std):
            digest.update(tensor.detach().cpu().float().numpy().tobytes())
        return {"kinds": list(self.kinds), "features": list(FEATURE_NAMES), "hidden": list(self.config.hidden),
                "fingerprint": digest.hexdigest()[:16]}

    def save(self, path) -> None:
        """Write the fitted predictor to `path` atomically (``MaskPredictor.load`` reads it).

        >>> import os, tempfile
        >>> features = {"w": torch.randn(8, len(FEATURE_NAMES))}
        >>> predictor = MaskPredictor(PredictorConfig(epochs=1)).fit_features(
        ...     features, {"w": torch.arange(8) < 2}, ["linear"])
        >>> path = os.path.join(tempfile.mkdtemp(), "predictor.pt")
        >>> predictor.save(path)
        >>> MaskPredictor.load(path).describe() == predictor.describe()
        True
        """
        if not self.fitted:
            raise PrunekitError("nothing to save: this MaskPredictor has not been fitted yet")
        atomic_save({"format": FORMAT, "version": VERSION, "config": {**asdict(self.config),
                                                                       "hidden": list(self.config.hidden)},
                     "kinds": list(self.kinds), "features": list(FEATURE_NAMES), "feature_mean": self.feature_mean,
                     "feature_std": self.feature_std, "state_dict": self.network.state_dict()}, path)

    @classmethod
    def load(cls, path) -> MaskPredictor:
        """A predictor saved by ``save``; a file of another kind or feature set is refused."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as error:
            raise PrunekitError(f"cannot read a mask predictor from '{path}': {error}") from error
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
            raise PrunekitError(f"'{path}' is not a prunekit mask predictor (version {VERSION}); write one with "
                                "MaskPredictor.save(path)")
        if payload["features"] != list(FEATURE_NAMES):
            raise PrunekitError(f"'{path}' was fitted on features {payload['features']}, but this prunekit computes "
                                f"{list(FEATURE_NAMES)}: fit the predictor again")
        predictor = cls(PredictorConfig(**payload["config"]))
        predictor.network.load_state_dict(payload["state_dict"])
        predictor.kinds = tuple(payload["kinds"])
        predictor.feature_mean, predictor.feature_std = payload["feature_mean"], payload["feature_std"]
        return predictor


def _train(network: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, config: PredictorConfig) -> None:
    """Minimise binary cross-entropy of the keep labels with Adam over shuffled minibatches."""
    with seeded_rng(config.seed), _one_thread():
        for layer in network:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        generator = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
        network.train()
        for _ in range(config.epochs):
            for batch in torch.randperm(len(targets), generator=generator).split(config.batch_size):
                loss = F.binary_cross_entropy_with_logits(network(inputs[batch]).squeeze(1), targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    network.eval()


@contextmanager
def _one_thread() -> Iterator[None]:
    """Inside: torch computes on one CPU thread (the caller's setting comes back on exit). The
    network is tiny: with several threads each step spends most of its time synchronising them
    (measured 60x slower on two busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_kinds(model: nn.Module, names: Iterable[str], kinds: Sequence[str]) -> None:
    """An error naming the weights whose layer kind is not among `kinds`."""
    unsupported: dict[str, list[str]] = {}
    for name in names:
        kind = layer_kind(model, name)
        if kind not in kinds:
            unsupported.setdefault(kind, []).append(name)
    if not unsupported:
        return
    kind, names = next(iter(unsupported.items()))
    layers = list(dict.fromkeys(split_name(name)[0] for name in names))
    where = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    exclude = f"exclude={layers[:4]!r}" + (" (and the rest)" if len(layers) > 4 else "")
    if kind in FEATURE_KINDS:
        raise PrunekitError(
            f"the mask predictor was fitted on {' and '.join(kinds)} layers and never saw {kind} weights ({where}); "
            f"exclude those layers ({exclude}, or their layer type) or fit it on a model with {kind} layers")
    raise PrunekitError(
        f"the mask predictor has no features for {kind} layers ({where}): it reads only "
        f"{' and '.join(FEATURE_KINDS)} weights; exclude those layers ({exclude}, or their layer type) or prune "
        "them with another method")


def _check_labels(model: nn.Module, keep_masks: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of `keep_masks`, checked against `model`'s prunable weights."""
    if not isinstance(keep_masks, Mapping) or not keep_masks:
        raise PrunekitError("keep_masks must map weight names to bool keep-masks, e.g. the get_masks(model) of "
                            f"the oracle's pruned model; got {type(keep_masks).__name__}")
    targets = set(resolve_targets(model))
    shapes = {name: tuple(tensor.shape) for name, tensor in named_effective_parameters(model)}
    for name, mask in keep_masks.items():
        if name not in targets:
            raise PrunekitError(f"keep_masks names '{name}', which is no prunable weight of the model; prunable: "
                                f"{', '.join(sorted(targets))}")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shapes[name]:
            raise PrunekitError(f"keep_masks['{name}'] must be a bool tensor shaped {shapes[name]} like the weight")
    return [name for name in resolve_targets(model) if name in keep_masks]  # model order


def mask_agreement(keep: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """How well the weights `keep` prunes match those `reference` prunes (both ``{name: bool
    keep-mask}``, over the names of `reference`): precision and recall of the pruned set, their
    F1, and the Jaccard index of the kept sets (at equal sparsity precision = recall = F1; the
    kept sets, much smaller at high sparsity, tell methods apart more clearly).

    >>> reference = {"w": torch.tensor([True, True, False, False])}
    >>> mask_agreement({"w": torch.tensor([True, False, False, True])}, reference)
    {'precision': 0.5, 'recall': 0.5, 'f1': 0.5, 'jaccard_kept': 0.3333333333333333}
    """
    mine = torch.cat([keep[name].reshape(-1).cpu() for name in reference])
    theirs = torch.cat([reference[name].reshape(-1).cpu() for name in reference])
    both_pruned = int((~mine & ~theirs).sum())
    precision = both_pruned / max(int((~mine).sum()), 1)
    recall = both_pruned / max(int((~theirs).sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    jaccard = int((mine & theirs).sum()) / max(int((mine | theirs).sum()), 1)
    return {"precision": precision, "recall": recall, "f1": f1, "jaccard_kept": jaccard}


def check_predictor_option(method: str, reads: str | None, predictor: object) -> None:
    """The `predictor` option goes with a criterion that reads predictions, and only with one.

    >>> check_predictor_option("magnitude", "weight", None)
    """
    if reads == "predicted" and predictor is None:
        raise PrunekitError(f"method '{method}' prunes by a trained mask predictor's keep-probabilities: pass "
                            "predictor=MaskPredictor.load(path) (or one you fitted) and data=")
    if predictor is not None and reads != "predicted":
        raise PrunekitError(f"predictor= is read by method 'predictor' only; method '{method}' would ignore it")
    if predictor is not None and not isinstance(predictor, MaskPredictor):
        raise PrunekitError(f"predictor must be a prunekit.predictor.MaskPredictor, got {type(predictor).__name__}")
    if predictor is not None and not predictor.fitted:
        raise PrunekitError("this MaskPredictor has not been fitted: call predictor.fit(model, keep_masks, data) "
                            "or use MaskPredictor.load(path)")


__all__ = ["MaskPredictor", "PredictorConfig", "check_predictor_option", "mask_agreement"]
