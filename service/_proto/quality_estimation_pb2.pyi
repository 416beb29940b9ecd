from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_PASS: _ClassVar[Verdict]
    VERDICT_REVIEW: _ClassVar[Verdict]
    VERDICT_FAIL: _ClassVar[Verdict]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]
    SEVERITY_REVIEW: _ClassVar[Severity]
    SEVERITY_FAIL: _ClassVar[Severity]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
VERDICT_UNSPECIFIED: Verdict
VERDICT_PASS: Verdict
VERDICT_REVIEW: Verdict
VERDICT_FAIL: Verdict
SEVERITY_UNSPECIFIED: Severity
SEVERITY_INFO: Severity
SEVERITY_REVIEW: Severity
SEVERITY_FAIL: Severity

class NiftiFiles(_message.Message):
    __slots__ = ("t1c", "t1", "t2", "flair", "segmentation")
    T1C_FIELD_NUMBER: _ClassVar[int]
    T1_FIELD_NUMBER: _ClassVar[int]
    T2_FIELD_NUMBER: _ClassVar[int]
    FLAIR_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    t1c: bytes
    t1: bytes
    t2: bytes
    flair: bytes
    segmentation: bytes
    def __init__(self, t1c: _Optional[bytes] = ..., t1: _Optional[bytes] = ..., t2: _Optional[bytes] = ..., flair: _Optional[bytes] = ..., segmentation: _Optional[bytes] = ...) -> None: ...

class ServerPaths(_message.Message):
    __slots__ = ("case_dir", "t1c", "t1", "t2", "flair", "segmentation")
    CASE_DIR_FIELD_NUMBER: _ClassVar[int]
    T1C_FIELD_NUMBER: _ClassVar[int]
    T1_FIELD_NUMBER: _ClassVar[int]
    T2_FIELD_NUMBER: _ClassVar[int]
    FLAIR_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    case_dir: str
    t1c: str
    t1: str
    t2: str
    flair: str
    segmentation: str
    def __init__(self, case_dir: _Optional[str] = ..., t1c: _Optional[str] = ..., t1: _Optional[str] = ..., t2: _Optional[str] = ..., flair: _Optional[str] = ..., segmentation: _Optional[str] = ...) -> None: ...

class ScoreOptions(_message.Message):
    __slots__ = ("run_gate", "alpha")
    RUN_GATE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    run_gate: bool
    alpha: float
    def __init__(self, run_gate: _Optional[bool] = ..., alpha: _Optional[float] = ...) -> None: ...

class ScoreCaseRequest(_message.Message):
    __slots__ = ("case_id", "files", "paths", "options")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    files: NiftiFiles
    paths: ServerPaths
    options: ScoreOptions
    def __init__(self, case_id: _Optional[str] = ..., files: _Optional[_Union[NiftiFiles, _Mapping]] = ..., paths: _Optional[_Union[ServerPaths, _Mapping]] = ..., options: _Optional[_Union[ScoreOptions, _Mapping]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("data", "shape", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class ScoreViewsRequest(_message.Message):
    __slots__ = ("case_id", "views", "center_of_mass")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    CENTER_OF_MASS_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    views: Tensor
    center_of_mass: CenterOfMass
    def __init__(self, case_id: _Optional[str] = ..., views: _Optional[_Union[Tensor, _Mapping]] = ..., center_of_mass: _Optional[_Union[CenterOfMass, _Mapping]] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("case", "views")
    CASE_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    case: ScoreCaseRequest
    views: ScoreViewsRequest
    def __init__(self, case: _Optional[_Union[ScoreCaseRequest, _Mapping]] = ..., views: _Optional[_Union[ScoreViewsRequest, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CenterOfMass(_message.Message):
    __slots__ = ("x", "y", "z")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    z: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., z: _Optional[int] = ...) -> None: ...

class ViewScore(_message.Message):
    __slots__ = ("view", "stars")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    STARS_FIELD_NUMBER: _ClassVar[int]
    view: str
    stars: float
    def __init__(self, view: _Optional[str] = ..., stars: _Optional[float] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("model_id", "model_sha256", "backend", "providers", "precision")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_sha256: str
    backend: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    precision: str
    def __init__(self, model_id: _Optional[str] = ..., model_sha256: _Optional[str] = ..., backend: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ..., precision: _Optional[str] = ...) -> None: ...

class QCCheck(_message.Message):
    __slots__ = ("name", "value", "threshold", "passed", "severity", "message", "unit", "region", "family", "p_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    threshold: float
    passed: bool
    severity: Severity
    message: str
    unit: str
    region: str
    family: str
    p_value: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., passed: _Optional[bool] = ..., severity: _Optional[_Union[Severity, str]] = ..., message: _Optional[str] = ..., unit: _Optional[str] = ..., region: _Optional[str] = ..., family: _Optional[str] = ..., p_value: _Optional[float] = ...) -> None: ...

class PredictedDice(_message.Message):
    __slots__ = ("dice", "low", "high", "coverage")
    DICE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    dice: float
    low: float
    high: float
    coverage: float
    def __init__(self, dice: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., coverage: _Optional[float] = ...) -> None: ...

class EvidenceSlice(_message.Message):
    __slots__ = ("axis", "index", "strength")
    AXIS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    axis: str
    index: int
    strength: float
    def __init__(self, axis: _Optional[str] = ..., index: _Optional[int] = ..., strength: _Optional[float] = ...) -> None: ...

class QCRegion(_message.Message):
    __slots__ = ("region", "verdict", "p_value", "checks", "predicted_dice", "evidence_slices", "consensus_dice")
    REGION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_DICE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_SLICES_FIELD_NUMBER: _ClassVar[int]
    CONSENSUS_DICE_FIELD_NUMBER: _ClassVar[int]
    region: str
    verdict: Verdict
    p_value: float
    checks: _containers.RepeatedCompositeFieldContainer[QCCheck]
    predicted_dice: PredictedDice
    evidence_slices: _containers.RepeatedCompositeFieldContainer[EvidenceSlice]
    consensus_dice: float
    def __init__(self, region: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., p_value: _Optional[float] = ..., checks: _Optional[_Iterable[_Union[QCCheck, _Mapping]]] = ..., predicted_dice: _Optional[_Union[PredictedDice, _Mapping]] = ..., evidence_slices: _Optional[_Iterable[_Union[EvidenceSlice, _Mapping]]] = ..., consensus_dice: _Optional[float] = ...) -> None: ...

class QCCalibration(_message.Message):
    __slots__ = ("size", "min_alpha", "sites", "description", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_ALPHA_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    size: int
    min_alpha: float
    sites: _containers.RepeatedScalarFieldContainer[str]
    description: str
    extra: _containers.ScalarMap[str, str]
    def __init__(self, size: _Optional[int] = ..., min_alpha: _Optional[float] = ..., sites: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class QCGate(_message.Message):
    __slots__ = ("verdict", "gate_score", "reasons", "checks", "star_threshold", "elapsed_ms", "alpha", "p_value", "combination", "regions", "calibration")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    GATE_SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    STAR_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    COMBINATION_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    gate_score: float
    reasons: _containers.RepeatedScalarFieldContainer[str]
    checks: _containers.RepeatedCompositeFieldContainer[QCCheck]
    star_threshold: float
    elapsed_ms: float
    alpha: float
    p_value: float
    combination: str
    regions: _containers.RepeatedCompositeFieldContainer[QCRegion]
    calibration: QCCalibration
    def __init__(self, verdict: _Optional[_Union[Verdict, str]] = ..., gate_score: _Optional[float] = ..., reasons: _Optional[_Iterable[str]] = ..., checks: _Optional[_Iterable[_Union[QCCheck, _Mapping]]] = ..., star_threshold: _Optional[float] = ..., elapsed_ms: _Optional[float] = ..., alpha: _Optional[float] = ..., p_value: _Optional[float] = ..., combination: _Optional[str] = ..., regions: _Optional[_Iterable[_Union[QCRegion, _Mapping]]] = ..., calibration: _Optional[_Union[QCCalibration, _Mapping]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("case_id", "mean_stars", "views", "center_of_mass", "warnings", "model", "timings_ms", "gate", "request_id")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    MEAN_STARS_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    CENTER_OF_MASS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    mean_stars: float
    views: _containers.RepeatedCompositeFieldContainer[ViewScore]
    center_of_mass: CenterOfMass
    warnings: _containers.RepeatedScalarFieldContainer[str]
    model: ModelRef
    timings_ms: _containers.ScalarMap[str, float]
    gate: QCGate
    request_id: str
    def __init__(self, case_id: _Optional[str] = ..., mean_stars: _Optional[float] = ..., views: _Optional[_Iterable[_Union[ViewScore, _Mapping]]] = ..., center_of_mass: _Optional[_Union[CenterOfMass, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., gate: _Optional[_Union[QCGate, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "kind", "field", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    kind: str
    field: str
    message: str
    def __init__(self, code: _Optional[str] = ..., kind: _Optional[str] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("index", "case_id", "result", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    case_id: str
    result: ScoreResponse
    error: ItemError
    def __init__(self, index: _Optional[int] = ..., case_id: _Optional[str] = ..., result: _Optional[_Union[ScoreResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "onnx_sha256", "weights_sha256", "contract_version", "views", "channels", "spatial_size", "contract_json", "card_json", "runtime", "max_batch_size", "max_receive_message_bytes", "server_paths_enabled", "max_volume_voxels", "max_grid_side", "max_view_side", "max_streams", "max_call_seconds", "decode_budget_bytes")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ONNX_SHA256_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SPATIAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_JSON_FIELD_NUMBER: _ClassVar[int]
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_RECEIVE_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVER_PATHS_ENABLED_FIELD_NUMBER: _ClassVar[int]
    MAX_VOLUME_VOXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_GRID_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_VIEW_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_CALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DECODE_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    onnx_sha256: str
    weights_sha256: str
    contract_version: str
    views: _containers.RepeatedScalarFieldContainer[str]
    channels: _containers.RepeatedScalarFieldContainer[str]
    spatial_size: _containers.RepeatedScalarFieldContainer[int]
    contract_json: str
    card_json: str
    runtime: ModelRef
    max_batch_size: int
    max_receive_message_bytes: int
    server_paths_enabled: bool
    max_volume_voxels: int
    max_grid_side: int
    max_view_side: int
    max_streams: int
    max_call_seconds: float
    decode_budget_bytes: int
    def __init__(self, model_id: _Optional[str] = ..., onnx_sha256: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., contract_version: _Optional[str] = ..., views: _Optional[_Iterable[str]] = ..., channels: _Optional[_Iterable[str]] = ..., spatial_size: _Optional[_Iterable[int]] = ..., contract_json: _Optional[str] = ..., card_json: _Optional[str] = ..., runtime: _Optional[_Union[ModelRef, _Mapping]] = ..., max_batch_size: _Optional[int] = ..., max_receive_message_bytes: _Optional[int] = ..., server_paths_enabled: _Optional[bool] = ..., max_volume_voxels: _Optional[int] = ..., max_grid_side: _Optional[int] = ..., max_view_side: _Optional[int] = ..., max_streams: _Optional[int] = ..., max_call_seconds: _Optional[float] = ..., decode_budget_bytes: _Optional[int] = ...) -> None: ...

class DicomInstance(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ScoreStudyResponse(_message.Message):
    __slots__ = ("result", "study_instance_uid", "structured_report", "key_object_selection")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_REPORT_FIELD_NUMBER: _ClassVar[int]
    KEY_OBJECT_SELECTION_FIELD_NUMBER: _ClassVar[int]
    result: ScoreResponse
    study_instance_uid: str
    structured_report: bytes
    key_object_selection: bytes
    def __init__(self, result: _Optional[_Union[ScoreResponse, _Mapping]] = ..., study_instance_uid: _Optional[str] = ..., structured_report: _Optional[bytes] = ..., key_object_selection: _Optional[bytes] = ...) -> None: ...
