"""QuantumHub: the per-model owner of every adapter's state, computing all layers' factors once per pass.

peft's tuners keep an adapter's weights in each layer. Quantum-PEFT's factors are cheapest when all factors of
one dimension n and rank K are simulated together: one circuit bank per distinct (n, K) holds them all as
rows of one (B, P) angle tensor. So an adapter's trainable state (banks, lam, masks) lives in one
`QuantumAdapterState` held by a `QuantumHub` (shared state of the tuner, `QuantumModel.qpeft_hub`, as
TinyLoRA's and VB-LoRA's shared parameters are), and each `QuantumLinear` only knows its rows. The hub computes all factors of the active adapters once per forward
pass of the model (a forward-pre-hook on it): with grad enabled a fresh graph every pass; under no_grad a
cache, kept until a parameter or mask changes or train/eval mode changes. Computing in the pre-hook, before
any layer runs, keeps the factors outside gradient-checkpointed blocks, so non-reentrant checkpointing
recomputes a block with the very same factor tensors and gives the same gradients. A bank whose matrices are
all full rank is built differently while training: the pre-hook computes its sums of Kronecker products, and
each layer builds from them only the factor its folded update needs (an op of the layer, so a checkpointed
block recomputes it); or, when the layers do not fold (under autocast), the pre-hook forms the bank from the
sums, cast to the GEMM dtype, keeping no float32 copy, and each layer runs as one autograd op that saves no
more than its input (FactoredLinear).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from qpeft.errors import QpeftError
from qpeft.quantum import KronSum
from qpeft.tuner import fold
from qpeft.tuner.ops import DeltaWeight, cheapest_plan, compute_dtype, no_autocast
from qpeft.tuner.state import BankKey, PassFactors, QuantumAdapterState

HUB = "qpeft_hub"  # attribute of the tuner (QuantumModel) that holds the hub: state-dict keys base_model.qpeft_hub.*


class QuantumHub(nn.Module):
    """Owns every adapter's state (`quantum_adapters[name]`) and computes the factors once per forward pass."""

    def __init__(self):
        super().__init__()
        self.quantum_adapters = nn.ModuleDict()
        self.active: list[str] = []  # the tuner's active adapters (QuantumModel.set_adapter)
        self.enabled = True  # False inside PeftModel.disable_adapter(): the pass computes nothing
        self._pass = 0  # counts forward passes with grad enabled
        self._pass_grad = False  # was grad enabled when the current forward pass began?
        self._base_dtype: torch.dtype | None = None  # of the model's frozen weights, seen when a pass begins
        self._cache: dict[str, tuple[tuple, PassFactors]] = {}  # adapter -> (cache key, its factors)
        # adapter -> (grad enabled, its factors) for the pass under way: set by open_pass, cleared by close_pass,
        # so that the model's layers skip re-validating the cache (a walk over its parameters) each
        self._live: dict[str, tuple[bool, PassFactors]] = {}
        # id(x) -> (a weak reference to x, its version, x cast to the GEMM dtype), for the pass under way
        self._casts: dict[int, tuple[weakref.ref, int, Tensor]] = {}
        self._depth = 0  # open forward_pass scopes: nested ones (PeftModel's, then the model's hook) join

    def _apply(self, *args, **kwargs):
        self._cache, self._live, self._casts = {}, {}, {}  # .to() / .float() replace tensors
        return super()._apply(*args, **kwargs)

    @contextlib.contextmanager
    def forward_pass(self, model: nn.Module) -> Iterator[None]:
        """The scope of one forward pass of `model`, the one place a pass opens and closes. On opening, the
        factors of the active adapters are computed (a new graph with grad enabled; the cache under no_grad),
        outside any checkpointed block, and cast for the dtype the layers compute in: autocast's if autocast is
        on now, else the frozen weights'. Nothing is carried over from an earlier pass. Entered by
        QuantumModel._enable_peft_forward_hooks (PeftModel's forward and generate) and by the adapted model's
        forward hooks (attach_to); a scope entered inside an open one joins it. Enter autocast before the scope
        (the harness's Trainer does: qpeft.hf_trainer): autocast entered inside the model's forward leaves the
        layers to form their factors one by one, every pass alike."""
        self.open_pass(model)
        try:
            yield
        finally:
            self.close_pass()

    def attach_to(self, model: nn.Module) -> None:
        """Hook `model`'s forward: a forward_pass around it (closed even if the forward raises)."""
        model.register_forward_pre_hook(self.begin_pass)
        model.register_forward_hook(self.end_pass, always_call=True)

    def detach_from(self, model: nn.Module) -> None:
        """Remove this hub's forward hooks from `model`. Found by owner rather than kept as handles: a handle
        survives copy.deepcopy pointing at the original model's hooks."""
        for hooks in (model._forward_pre_hooks, model._forward_hooks):
            for hook_id, hook in list(hooks.items()):
                if getattr(hook, "__self__", None) is self:
                    del hooks[hook_id]
                    model._forward_hooks_always_called.pop(hook_id, None)

    def begin_pass(self, module: nn.Module, args) -> None:
        """Forward-pre-hook of the adapted model: open its forward_pass."""
        self.open_pass(module)

    def end_pass(self, module: nn.Module, args, output) -> None:
        """Forward hook of the adapted model (always called): close its forward_pass."""
        self.close_pass()

    @torch.compiler.disable  # eager under torch.compile: Dynamo would guard on the pass counter, recompiling each step
    def open_pass(self, model: nn.Module) -> None:
        self._depth += 1
        if self._depth > 1:
            return
        self._live, self._casts = {}, {}
        self._pass_grad = torch.is_grad_enabled()
        if self._pass_grad:
            self._pass += 1
        frozen = next((p for p in model.parameters() if not p.requires_grad), None)
        self._base_dtype = None if frozen is None else frozen.dtype
        if not self.enabled:
            return
        # the layers' matmuls run in autocast's dtype, else in the frozen weights' (their inputs match them)
        dtype = None
        if frozen is not None and frozen.dtype.is_floating_point:
            dtype = compute_dtype(frozen.dtype, frozen.device.type)
        for name in self.active:
            state = self.quantum_adapters[name] if name in self.quantum_adapters else None
            if state is not None and not state.is_meta:
                self._live[name] = (self._pass_grad, self._factors(name, quantise=None))
                if dtype is not None:
                    self._low_rank_banks(name, dtype, not fold.allowed(state, self._base_dtype))

    @torch.compiler.disable
    def close_pass(self) -> None:
        """The pass is over: the next call of a layer (outside the model's forward, or recomputing a
        checkpointed block in backward) checks the cache again."""
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._live, self._casts = {}, {}

    def cast_input(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """x in the GEMM dtype. Within the model's forward one copy per input tensor, shared by the layers that
        read it (query, key and value read the same hidden states): autograd saves it once, where peft's LoRA
        layers (and autocast) make and save a copy per layer. Outside the forward (or while a checkpointed
        block is recomputed), and for a tensor made under inference_mode (it has no version counter to tell
        an in-place change), each call casts its own."""
        if x.dtype == dtype:
            return x
        if not self._live or x.is_inference():
            return x.to(dtype)
        seen = self._casts.get(id(x))
        if seen is not None and seen[0]() is x and seen[1] == x._version and seen[2].dtype == dtype:
            return seen[2]
        cast = x.to(dtype)
        self._casts[id(x)] = (weakref.ref(x), x._version, cast)
        return cast

    def _quantise(self, state: QuantumAdapterState) -> bool:
        bits = state.config.quant_bits
        return bits is not None and (state.config.quant_mode == "qat" or not self.training)

    def _factors(self, name: str, quantise: bool | None) -> PassFactors:
        """The factors of adapter `name` in this pass, computed or cached: its banks' stacked U's, lam_eff and
        sums (QuantumAdapterState.compute), and what the layers derive from them in the pass (PassFactors). The
        full-rank Pauli banks are sums only: a
        folding layer builds the factor it needs, and the low-rank path's cast banks are formed from the sums
        (_low_rank_banks), so that no float32 copy of them stays alive through a step, nor in the no_grad cache
        (docs/method.md section 4 has the memory measured)."""
        live = self._live.get(name)
        if quantise is None and live is not None and live[0] == torch.is_grad_enabled():
            return live[1]  # inside the pass: open_pass computed or validated them
        state = self.quantum_adapters[name]
        quantise = self._quantise(state) if quantise is None else quantise
        grad = torch.is_grad_enabled()
        watched = state.watched()
        key = (
            self._pass if grad else -1,
            grad,
            quantise,
            *[t._version for t in watched],
            *[t.data_ptr() for t in watched],
        )
        cached = self._cache.get(name)
        if cached is None or cached[0] != key:
            # under no_grad the cache serves every batch until a parameter changes
            f = state.compute(quantise)
            # each sum's circuits as rows of one unbind (their gradients meet in one stack per bank in backward),
            # made now for the banks that layers will build from (no batched U), so that a checkpointed block
            # finds them made; for the others when first asked (_kron_row)
            f.kron_rows.update({bank: kron.rows() for bank, kron in f.sums.items() if bank not in f.us})
            f.lam_rows.update({k: lam.unbind(0) for k, lam in f.lams.items()})
            cached = self._cache[name] = (key, f)
        return cached[1]

    @staticmethod
    def _kron_row(f: PassFactors, key: BankKey, row: int) -> KronSum:
        """Row `row` of bank `key`'s sum of Kronecker products (KronSum.rows, made once per pass)."""
        if key not in f.kron_rows:
            f.kron_rows[key] = f.sums[key].rows()
        return f.kron_rows[key][row]

    @classmethod
    def _factor(cls, f: PassFactors, key: BankKey, row: int) -> Tensor:
        """Row `row` of bank `key`, float32: from the batched bank, or built alone from its sum of Kronecker
        products (a full-rank bank in a pass that may fold; not cached, so a checkpointed block rebuilds it).
        Elementwise ops only: float32 whatever the autocast."""
        return f.us[key][row] if key in f.us else cls._kron_row(f, key, row).dense().squeeze(0)

    def low_rank_factors(
        self, name: str, row: int, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """What the low-rank path multiplies by for matrix `row`, in `dtype`: (U, V, lam_eff) for a full-rank
        matrix (lam float32, applied by the layer's FactoredLinear), (U, V diag(lam_eff), None) for the others.

        The factors are cast per bank when the pass begins, for the dtype the layers will compute in: one cast
        serves all rows of a bank, and for a narrow bank (K=8) the same op folds lam into its V rows, so such a
        layer adds only its two GEMMs (and their backward) to the step, fewer kernel launches than LoRA's layer
        (tests/test_tuner.py). Any other dtype, or a full-rank bank not cast in advance (a pass that may fold),
        is formed for this matrix alone, inside the layer (a checkpointed block must recompute what it formed)."""
        f = self._factors(name, quantise=None)
        state = self.quantum_adapters[name]
        r = state.index[row]
        banks, lam = f.low_rank.get(dtype, {}), f.lam_rows[r.lam_key][r.lam_row]  # ({}: formed here, alone)
        full = state.full_rank_banks
        U = banks[r.u][r.u_row] if r.u in banks else self._factor(f, r.u, r.u_row).to(dtype)
        if r.v in banks:  # lam folded in if the bank is narrow
            V = banks[r.v][r.v_row]
        else:
            V = self._factor(f, r.v, r.v_row)
            V = (V if r.v in full else V * lam).to(dtype)
        if state.full_rank(row):
            return U, V, lam
        # (a narrow matrix whose V bank is full rank, with mixed shapes: lam for this matrix alone)
        return U, V * lam.to(dtype) if r.v in full else V, None

    def _low_rank_banks(self, name: str, dtype: torch.dtype, full_rank: bool) -> None:
        """The banks of adapter `name` cast to `dtype`, as rows: a narrow bank with lam folded into its V rows
        (float32, then cast), a full-rank Taylor one alone; with `full_rank` also the full-rank Pauli banks,
        formed from their sums. Their float32 forms are not kept: nothing saves them for backward (a
        cast needs no input there, and their layers apply lam to the cast factors), so only the cast copy lives
        through the step."""
        f = self._factors(name, quantise=None)
        if dtype in f.low_rank:
            return
        state, banks = self.quantum_adapters[name], {}
        for key in state.bank_keys:
            if key not in state.full_rank_banks:  # narrow: always built batched
                u = f.us[key] * state.lam_of_rows(key, f.lams) if key in state.lam_rows else f.us[key]
                banks[key] = u.to(dtype).unbind(0)
            elif key in f.us:  # full rank, built batched (Taylor)
                banks[key] = f.us[key].to(dtype).unbind(0)
            elif full_rank:
                # laid out (B, K, n): one batched contraction (float32: a matmul, so autocast off), whose backward
                # saves only the sum's small factors (dense()'s per-term products save (B, m, K) tensors)
                with no_autocast(f.sums[key].xs[0].device):
                    dense = f.sums[key].dense(transposed=True)
                banks[key] = dense.to(dtype).transpose(1, 2).unbind(0)
        f.low_rank[dtype] = banks

    def product_plan(self, name: str, row: int, quantise: bool | None = None) -> tuple[int, str, int]:
        """(K, how dW is formed, its multiply-adds) for matrix `row` of adapter `name` (see cheapest_plan);
        it depends on the shapes alone, so it is kept for the pass."""
        f = self._factors(name, quantise)
        if row not in f.plans:
            state = self.quantum_adapters[name]
            (d_out, d_in, k), r = state.shapes[row], state.index[row]
            # a row's cost is its bank's per circuit
            f.plans[row] = (k, *cheapest_plan(d_out, d_in, k, f.sums.get(r.u), f.sums.get(r.v)))
        return f.plans[row]

    def delta_weight_operands(
        self, name: str, row: int, quantise: bool | None = None
    ) -> tuple[DeltaWeight, tuple[Tensor, ...]]:
        """dW of matrix `row` as a function of a few tensors of this pass: `build(*operands)` forms it (float32,
        by the cheapest plan). The operands are the factors' own tensors (a batched row, or the Kronecker
        factors of a sum) and lam, so a folded layer can form dW again in backward instead of saving it."""
        f = self._factors(name, quantise)
        r = self.quantum_adapters[name].index[row]
        _, how, _ = self.product_plan(name, row, quantise)
        sides = []
        for key, i, applied in ((r.u, r.u_row, how == "u"), (r.v, r.v_row, how == "v")):
            # the batched row when there is one, unless the plan applies this factor's sum
            if key in f.us and not applied:
                sides.append((None, (f.us[key][i],)))
            else:
                kron = self._kron_row(f, key, i)
                sides.append((kron.circuit, tuple(kron.xs)))
        (u_circuit, u_ops), (v_circuit, v_ops) = sides
        build = DeltaWeight(how, u_circuit, len(u_ops), v_circuit)
        return build, (*u_ops, *v_ops, f.lam_rows[r.lam_key][r.lam_row])

    def delta_weight(self, name: str, row: int, quantise: bool | None = None) -> Tensor:
        """dW = s U diag(lam * mask) V^T of matrix `row` (float32, autocast off; a graph to the adapter when grad
        is enabled), forming only what the cheapest plan needs; under no_grad cached until a parameter changes."""
        f = self._factors(name, quantise)
        if not torch.is_grad_enabled() and row in f.delta_weights:
            return f.delta_weights[row]
        build, operands = self.delta_weight_operands(name, row, quantise)
        with no_autocast(operands[-1].device):
            dw = build(*operands)
        if not torch.is_grad_enabled():
            f.delta_weights[row] = dw
        return dw

    def check_not_reentrant(self) -> None:
        """Reentrant checkpointing runs blocks under no_grad and recomputes them in backward, each with its own
        backward through factors shared by all blocks: that cannot be correct, so say so."""
        if self.training and self._pass_grad and not torch.is_grad_enabled():
            if any(p.requires_grad for p in self.parameters()):
                raise QpeftError(
                    "Quantum-PEFT does not support reentrant gradient checkpointing: use "
                    "gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})"
                )

    def delete(self, adapter_name: str) -> None:
        """Drop an adapter's state and anything cached from it."""
        del self.quantum_adapters[adapter_name]
        self._cache.pop(adapter_name, None)
        self._live.pop(adapter_name, None)
        self.active = [name for name in self.active if name != adapter_name]

    def extra_repr(self) -> str:
        return f"adapters={list(self.quantum_adapters)}"
