"""Write TFLite Model Metadata as MediaPipe Model Maker and TFLite Support do (metadata_schema.fbs:
a "TFLITE_METADATA" buffer with the identifier M001, and the labels file in a zip appended to the model),
with the flatbuffers package, so tests can build models that carry it. Checked against TFLite Support
0.4.4's MetadataDisplayer, which reads these files as it reads its own."""

from __future__ import annotations

import io
import zipfile

_NORMALIZATION_OPTIONS, _IMAGE_PROPERTIES, _RGB, _TENSOR_AXIS_LABELS = 1, 2, 1, 2


def metadata_buffer(mean: list[float], std: list[float], labels_file: str = "labels.txt",
                    name: str = "ImageClassifier") -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def floats(values):
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependFloat32(float(v))
        return b.EndVector()

    def tables(offsets):
        b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    mean_v, std_v = floats(mean), floats(std)
    b.StartObject(2)  # NormalizationOptions: 0 mean, 1 std
    b.PrependUOffsetTRelativeSlot(0, mean_v, 0)
    b.PrependUOffsetTRelativeSlot(1, std_v, 0)
    norm = b.EndObject()
    b.StartObject(2)  # ProcessUnit: 0 options_type, 1 options
    b.PrependUint8Slot(0, _NORMALIZATION_OPTIONS, 0)
    b.PrependUOffsetTRelativeSlot(1, norm, 0)
    units = tables([b.EndObject()])
    b.StartObject(2)  # ImageProperties: 0 color_space
    b.PrependInt8Slot(0, _RGB, 0)
    props = b.EndObject()
    b.StartObject(3)  # Content: 0 content_properties_type, 1 content_properties
    b.PrependUint8Slot(0, _IMAGE_PROPERTIES, 0)
    b.PrependUOffsetTRelativeSlot(1, props, 0)
    content = b.EndObject()
    in_name = b.CreateString("image")
    b.StartObject(7)  # TensorMetadata: 0 name, 3 content, 4 process_units, 6 associated_files
    b.PrependUOffsetTRelativeSlot(0, in_name, 0)
    b.PrependUOffsetTRelativeSlot(3, content, 0)
    b.PrependUOffsetTRelativeSlot(4, units, 0)
    input_meta = b.EndObject()
    file_name = b.CreateString(labels_file)
    b.StartObject(5)  # AssociatedFile: 0 name, 2 type
    b.PrependUOffsetTRelativeSlot(0, file_name, 0)
    b.PrependInt8Slot(2, _TENSOR_AXIS_LABELS, 0)
    associated = tables([b.EndObject()])
    out_name = b.CreateString("probability")
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(0, out_name, 0)
    b.PrependUOffsetTRelativeSlot(6, associated, 0)
    output_meta = b.EndObject()
    inputs, outputs = tables([input_meta]), tables([output_meta])
    b.StartObject(10)  # SubGraphMetadata: 2 input_tensor_metadata, 3 output_tensor_metadata
    b.PrependUOffsetTRelativeSlot(2, inputs, 0)
    b.PrependUOffsetTRelativeSlot(3, outputs, 0)
    subgraphs = tables([b.EndObject()])
    model_name, version = b.CreateString(name), b.CreateString("1.0.0")
    b.StartObject(8)  # ModelMetadata: 0 name, 3 subgraph_metadata, 7 min_parser_version
    b.PrependUOffsetTRelativeSlot(0, model_name, 0)
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    b.PrependUOffsetTRelativeSlot(7, version, 0)
    b.Finish(b.EndObject(), file_identifier=b"M001")
    return bytes(b.Output())


def with_metadata(tflite: bytes, mean: list[float], std: list[float], labels: list[str] | None,
                  labels_file: str = "labels.txt") -> bytes:
    """The model with TFLite Model Metadata and, when given, its labels packed in the appended zip."""
    from edgevision.export.tflite import add_metadata

    content = add_metadata(tflite, "TFLITE_METADATA", metadata_buffer(mean, std, labels_file))
    if labels is None:
        return content
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(labels_file, "\n".join(labels) + "\n")
    return content + packed.getvalue()
