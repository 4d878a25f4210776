"""ONNX Runtime's contrib ops (`com.microsoft::*`) as onnxscript ops, for the ops' ONNX translations.

A translation (`OnnxLowering` of kind TRANSLATION) that maps a `qwen35::` op onto a contrib op
builds it with `contrib_op`, from the schema the installed ONNX Runtime registers (`ort_schema`),
so a node that does not match that runtime's signature fails at export, not at load time on a
phone. onnx, onnxruntime and onnxscript are imported on first use only: `ops` imports without them.

Not here: the translations themselves (each op's module), the exporter (`exporter.onnx`).
"""

from __future__ import annotations

import functools

CONTRIB_DOMAIN = "com.microsoft"


@functools.cache
def ort_schema(name: str, domain: str = CONTRIB_DOMAIN, outputs: int | None = None):
    """`onnx.defs.OpSchema` for the op `domain::name` as the installed ONNX Runtime registers it.

    `outputs` keeps only the first outputs (a translation's node then declares no optional output it
    does not use). Raises RuntimeError naming the fix when the runtime lacks the op.
    """
    import onnx
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_capi

    found = [s for s in ort_capi.get_all_operator_schema() if s.domain == domain and s.name == name]
    if not found:
        raise RuntimeError(
            f"onnxruntime {ort_capi.get_version_string()} has no {domain or 'ai.onnx'}::{name}; "
            "install onnxruntime >= 1.32 for the ort profile, or export with the portable profile"
        )
    src = max(found, key=lambda s: s.since_version)
    schema_cls = onnx.defs.OpSchema

    def param(p):
        option = schema_cls.FormalParameterOption[p.option.name]
        return schema_cls.FormalParameter(p.name, p.typeStr, param_option=option, is_homogeneous=p.isHomogeneous)

    return schema_cls(
        name,
        domain,
        src.since_version,
        inputs=[param(p) for p in src.inputs],
        outputs=[param(p) for p in src.outputs[:outputs]],
        type_constraints=[(tc.type_param_str, list(tc.allowed_type_strs), "") for tc in src.type_constraints],
        attributes=[
            schema_cls.Attribute(n, schema_cls.AttrType[a.type.name], required=a.required) for n, a in src.attributes.items()
        ],
    )


@functools.cache
def contrib_op(name: str, outputs: int | None = None):
    """An onnxscript op for `com.microsoft::<name>` whose schema is the one the installed ONNX Runtime registers.

    onnx itself does not know the contrib ops, and registering them in onnx's global schema registry
    breaks `onnx.reference` (names clash with the default-domain LinearAttention), so the schema is
    attached to this one op object instead. `outputs`: as in `ort_schema`.
    """
    import onnxscript

    schema = ort_schema(name, outputs=outputs)
    return onnxscript.values.Op(onnxscript.values.Opset(CONTRIB_DOMAIN, schema.since_version), name, schema)
