"""The analysis report: one row per graph node, totals, and their table / dict / text renderings."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table


@dataclass
class LayerRow:
    """What one node of the network computes.

    Attributes:
        name: module path for a module call (``"layer1.0.conv1"``; ``"#2"``, ``"#3"`` mark repeated calls of
            one module), else the enclosing module path and the fx node name (``"layer1.0.add"``).
        op: short op name: the module class (``"Conv2d"``) or the function / method (``"add"``, ``"cat"``).
        output_shape: shape of the first output tensor, batch dim included.
        params: parameters first used by this node (a shared parameter counts once, at its first use).
        macs: multiply-accumulates of conv / linear / matmul / bmm / einsum / attention.
        activation_bytes: bytes of the node's output tensors.
        rf: receptive field side length in input pixels of the node's widest unit (the largest over the
            spatial axes), ``"global"``, or 0 for a node that does not depend on the input.
        jump: input pixels between neighbouring output units (the largest over the spatial axes); a float
            only when upsampling makes it fractional.
        other_ops: elementwise operations of norms, pools, activations and arithmetic (not in ``macs``).
    """

    name: str
    op: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    activation_bytes: int
    rf: int | str
    jump: int
    other_ops: int = 0


def _si(value: float, unit: str = "") -> str:
    """``4089184256 -> "4.089 G"``: G from 1e9 on, M below, three decimals."""
    scale, prefix = (1e9, "G") if value >= 1e9 else (1e6, "M")
    return f"{value / scale:.3f} {prefix}{unit}"


@dataclass
class AnalysisReport:
    """Per-node rows and whole-network totals of :func:`cnnkit.analyze`.

    Attributes:
        rows: one :class:`LayerRow` per node that produces a tensor, in execution order.
        input_size: the analysed input shape, batch dim included.
        params: unique parameters of the model (``sum(p.numel() for p in model.parameters())``), including
            any the forward pass does not use.
        trainable_params: those of them with ``requires_grad``.
        macs: multiply-accumulates of the whole batch.
        flops: ``2 * macs``.
        activation_bytes: sum of the rows' output bytes (every node output kept, as for a backward pass;
            not the peak memory of inference).
        rf: receptive field of the model's (first) output, its widest unit's, or ``"global"``.
        jump: jump of the model's (first) output.
        method: ``"fx"`` for a graph walk, ``"hooks"`` for the module-hook fallback.
    """

    rows: list[LayerRow]
    input_size: tuple[int, ...]
    params: int
    trainable_params: int
    macs: int
    flops: int
    activation_bytes: int
    rf: int | str
    jump: int
    method: str

    def totals_text(self) -> str:
        """The totals as one line per figure."""
        return "\n".join(
            [
                f"params: {self.params:,} (trainable {self.trainable_params:,})",
                f"MACs: {_si(self.macs)}  FLOPs: {_si(self.flops)}  (input {'x'.join(map(str, self.input_size))})",
                f"activation memory: {self.activation_bytes / 1e6:,.3f} MB",
                f"output receptive field: {self.rf}  jump: {self.jump}  method: {self.method}",
            ]
        )

    def table(self, title: str | None = None) -> Table:
        """A rich table: Layer, Op, Output shape, Params, MACs, RF, Jump; the totals are its caption.

        Args:
            title: optional table title.

        Returns:
            a :class:`rich.table.Table` ready for ``Console.print``.
        """
        table = Table(title=title, caption=self.totals_text(), caption_justify="left")
        table.add_column("Layer", overflow="fold")
        table.add_column("Op")
        table.add_column("Output shape")
        for column in ("Params", "MACs", "RF", "Jump"):
            table.add_column(column, justify="right")
        for row in self.rows:
            rf = row.rf if isinstance(row.rf, str) else f"{row.rf:,}"
            table.add_row(
                row.name,
                row.op,
                "x".join(map(str, row.output_shape)),
                f"{row.params:,}",
                f"{row.macs:,}",
                rf,
                f"{row.jump:,}",
            )
        return table

    def to_dict(self) -> dict:
        """JSON-serialisable dict: ``rows`` (a list of dicts) and every total."""
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        for row in data["rows"]:
            row["output_shape"] = list(row["output_shape"])
        return data

    def __str__(self) -> str:
        buffer = io.StringIO()
        console = Console(file=buffer, width=160, color_system=None, force_terminal=False)
        console.print(self.table())
        return buffer.getvalue()
