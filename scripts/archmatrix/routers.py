"""Random routers whose expert choices are decisive on the matrix's positions.

A random router scores its experts nearly alike, and somewhere in 96 positions the k-th and the
(k+1)-th expert come within the few 1e-4 that llama.cpp's f16 arithmetic moves a score: the
choice flips and the row measures rounding, not the conversion. For the rows of
families_data.DECISIVE_ROUTERS, each router (shallowest first, the deeper ones see its output)
is redrawn from the same normal distribution, its family's own initialiser's scale, until its
smallest top-k margin over the positions measured is a fair part of its scores' spread; the
gates stay as soft as any random draw's, which ``summary`` shows in the row's note (the largest
share of one expert among the k chosen: near 1.0 would hide a wrong top-k normalisation).

A router is a module owning a (n_experts, hidden) weight whose name says gate or router;
a routing bias (e_score_correction_bias, on it or on its parent) marks a sigmoid router whose
choice is sigmoid(score) + bias, else the choice is by score and the gates a softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TARGET = 0.05  # smallest top-k margin wanted, as a fraction of the router's score spread
TRIES = 200  # draws per router at most (the best one stays)
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_top_k", "moe_k")


@dataclass
class Router:
    name: str
    weight: Any  # the (n_experts, hidden) parameter
    bias: Any  # the routing bias, or None
    inputs: Any = None  # the last forward's inputs to it, (positions, hidden)
    scores: Any = None  # and the scores it chose by, (positions, n_experts)


def _field(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` in the config or in one of its sub-config dicts."""
    for scope in (config, *(v for v in config.values() if isinstance(v, dict))):
        for key in keys:
            if isinstance(scope.get(key), int):
                return int(scope[key])
    return None


def find_routers(model: Any) -> tuple[list[Router], int]:
    """The model's routers, shallowest first, and its top-k."""
    config = model.config.to_dict()
    n_experts, top_k = _field(config, EXPERT_KEYS), _field(config, TOP_K_KEYS)
    if not n_experts or not top_k:
        raise ValueError(f"no expert count or top-k in {type(model.config).__name__}")
    modules = dict(model.named_modules())
    routers = []
    for name, module in modules.items():
        weight = getattr(module, "weight", None)
        last = name.rsplit(".", 1)[-1]
        if weight is None or weight.dim() != 2 or weight.shape[0] != n_experts:
            continue
        if not (last == "gate" or "router" in name):
            continue
        parent = modules.get(name.rsplit(".", 1)[0]) if "." in name else None
        bias = getattr(module, "e_score_correction_bias", None)
        if bias is None and parent is not None:
            bias = getattr(parent, "e_score_correction_bias", None)
        routers.append(Router(name, weight, bias))
    if not routers:
        raise ValueError(f"no router of {n_experts} experts found")
    return routers, top_k


def _forward(model: Any, routers: list[Router], ids: list[int]) -> None:
    """One forward pass over ``ids``, keeping each router's input and selection scores."""
    import torch

    handles = []
    for router in routers:
        module = next(m for m in model.modules() if getattr(m, "weight", None) is router.weight)

        def hook(_module: Any, args: tuple[Any, ...], router: Router = router) -> None:
            router.inputs = args[0].detach().reshape(-1, router.weight.shape[1]).double()
            router.scores = _scores(router, router.weight)

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(torch.tensor([ids], dtype=torch.long))
    finally:
        for handle in handles:
            handle.remove()


def _scores(router: Router, weight: Any) -> Any:
    """The scores ``weight`` gives the router's last inputs, as the router chooses by them."""
    import torch

    scores = router.inputs @ weight.detach().double().T
    if router.bias is not None:
        scores = torch.sigmoid(scores) + router.bias.detach().double()
    return scores


def _margin(scores: Any, top_k: int) -> float:
    """The smallest gap between the k-th and (k+1)-th score, over the scores' spread."""
    ordered = scores.sort(dim=-1, descending=True).values
    return float((ordered[:, top_k - 1] - ordered[:, top_k]).min() / scores.std())


def _top_share(router: Router, top_k: int) -> float:
    """The largest share of one expert among the k chosen (gates normalised over the k)."""
    import torch

    scores = router.scores
    chosen = scores.topk(top_k, dim=-1).indices
    if router.bias is not None:  # sigmoid gates, without the bias that only chooses
        gates = (scores - router.bias.double()).gather(-1, chosen)
    else:
        gates = torch.softmax(scores, dim=-1).gather(-1, chosen)
    return float((gates / gates.sum(-1, keepdim=True)).max())


def make_decisive(model: Any, ids: list[int], seed: int, *, redraw: bool = True) -> str:
    """Redraw the routers of ``model`` (in place) for decisive choices on ``ids`` (with
    ``redraw`` false, only measure them); the row's note: the smallest margin and the largest
    gate share, measured in transformers. A router's inputs do not depend on its own weights:
    one forward pass per router, then the draws."""
    import torch

    routers, top_k = find_routers(model)
    generator = torch.Generator().manual_seed(seed + 2)
    for router in routers if redraw else ():
        _forward(model, [router], ids)  # its inputs, with the shallower routers already drawn
        std = float(router.weight.detach().std())
        best, best_margin = router.weight.detach().clone(), _margin(router.scores, top_k)
        for _ in range(TRIES):
            if best_margin >= TARGET:
                break
            draw = std * torch.randn(router.weight.shape, generator=generator)
            draw = draw.to(torch.float16).to(router.weight.dtype)
            if (margin := _margin(_scores(router, draw), top_k)) > best_margin:
                best, best_margin = draw, margin
        with torch.no_grad():
            router.weight.copy_(best)
    _forward(model, routers, ids)
    margin = min(_margin(r.scores, top_k) for r in routers)
    share = max(_top_share(r, top_k) for r in routers)
    what = f"routers drawn for decisive top-{top_k} choices" if redraw else "routers as drawn"
    return (
        f"{what}: smallest top-{top_k} margin {margin:.3f} of the scores' spread over the "
        f"{len(ids)} positions, largest gate {share:.2f} of the chosen"
    )
