"""The reference generator walks any pydantic schema: sections, arrays of tables, units,
bounds, defaults; `python -m npusim.hw.docgen` writes both generated docs."""

from typing import Literal

from pydantic import BaseModel, Field

from npusim.hw import docgen
from npusim.hw.config import NPUConfig


class _Layer(BaseModel):
    match: str = Field(description="layer name pattern")
    acc_bits: int | None = Field(None, ge=2, le=62, description="accumulator width")


class _Mem(BaseModel):
    sram_kib: float = Field(64.0, gt=0, description="buffer")
    mode: Literal["a", "b"] = "a"


class _Npu(BaseModel):
    name: str = Field(min_length=1)
    memory: _Mem = Field(default_factory=_Mem)
    layer: list[_Layer] = Field(default_factory=list, description="per-layer overrides")


def test_keys_markdown_is_generic_over_the_schema():
    text = "\n".join(docgen.keys_markdown(_Npu))
    assert "### `[memory]`" in text and "### `[[layer]]` (array of tables)" in text
    assert "| `sram_kib` | number | KiB | `64.0` | > 0 | buffer |" in text
    assert "| `acc_bits` | integer or none | bits | none | >= 2, <= 62 | accumulator width |" in text
    assert '`"a"` \\| `"b"`' in text and "| `match` | string |  | **required** |" in text
    assert "| `name` | string |  | **required** | length >= 1 |" in text


def test_npu_reference_names_every_key_of_the_config():
    text = docgen.npu_file_markdown()
    for section, model in NPUConfig.model_fields.items():
        sub = model.annotation
        keys = sub.model_fields if isinstance(sub, type) and hasattr(sub, "model_fields") else {}
        for key in keys:
            assert f"| `{key}` |" in text, f"{section}.{key}"
    assert NPUConfig.from_toml_str(text.split("```toml\n")[1].split("```")[0]).precision.acc_bits == 16


def test_program_reference_lists_every_op_and_main_writes_both(tmp_path, capsys):
    from npusim.ir.ops import OPS

    text = docgen.program_format_markdown()
    for name in OPS:
        assert f"| `{name}` |" in text
    assert docgen.main([str(tmp_path)]) == 0
    for name, make in docgen.GENERATED.items():
        assert (tmp_path / name).read_text(encoding="utf-8") == make()
