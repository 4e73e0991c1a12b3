"""The address space: one analyser device per instrument, shaped after OPC UA ADI.

OPC UA's companion specification for Analyser Devices (ADI, OPC 10020) models an analyser as
``AnalyserDevice -> AnalyserChannel -> Stream``, the stream holding ``AcquisitionData`` and the
chemometric model's outputs. nirwatch follows that shape with plain objects and variables (it does
not load the ADI type nodeset)::

    Objects/Analysers/<instrument>                     AnalyserDevice
        Channel1                                       AnalyserChannel
            Stream1                                    Stream
                AcquisitionData/  SpectrumTimestamp, SampleId, MessageId (the spectrum's id),
                                  SpectrumSha256 (SHA-256 of its raw message)
                ChemometricModel/ Prediction (EngineeringUnits), Target, IntervalLow,
                                  IntervalHigh, ModelName, ModelVersion, BundleChecksum,
                                  FallbackReason
                Diagnostics/      Releasable, OutOfModel, OutsideRange, T2, T2Limit, Q, QLimit,
                                  Stale
    Objects/NirwatchServer/       BrokerReachable, ConsumerLag, PredictionsReceived

Node ids are strings in the namespace ``urn:nirwatch:opcua``:
``<instrument>.Channel1.Stream1.ChemometricModel.Prediction`` and so on. Every value carries
the spectrum's acquisition time as its SourceTimestamp. The Prediction's status is Good when
releasable, Uncertain when not releasable, BadNoData without a value, and Bad (BadOutOfService)
once no prediction came for ``stale_after_s``. A diagnostic the prediction lacks (no interval,
no T² for PLS) reads BadNoData (as OPC UA requires of a Bad value, its value is
then null; ``Diagnostics/Stale`` turns true). Every node is read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import Server, ua
from asyncua.common.node import Node

from nirwatch.messages.prediction import Prediction

NAMESPACE = "urn:nirwatch:opcua"
STATUS_NOT_RELEASABLE = ua.StatusCodes.Uncertain
STATUS_NO_VALUE = ua.StatusCodes.BadNoData
STATUS_STALE = ua.StatusCodes.BadOutOfService
_UNECE = "http://www.opcfoundation.org/UA/units/un/cefact"
#: Unit strings a bundle writes -> UNECE common codes (OPC UA EUInformation.UnitId).
_UNITS = {"%": "P1", "% w/w": "P1", "%w/w": "P1", "mg": "MGM", "g": "GRM", "mg/g": "M1"}

# (group, name, variant type) of every per-stream variable besides the Prediction itself.
_VARIABLES: tuple[tuple[str, str, ua.VariantType], ...] = (
    ("AcquisitionData", "SpectrumTimestamp", ua.VariantType.DateTime),
    ("AcquisitionData", "SampleId", ua.VariantType.String),
    ("AcquisitionData", "MessageId", ua.VariantType.String),
    ("AcquisitionData", "SpectrumSha256", ua.VariantType.String),
    ("ChemometricModel", "Target", ua.VariantType.String),
    ("ChemometricModel", "IntervalLow", ua.VariantType.Double),
    ("ChemometricModel", "IntervalHigh", ua.VariantType.Double),
    ("ChemometricModel", "ModelName", ua.VariantType.String),
    ("ChemometricModel", "ModelVersion", ua.VariantType.String),
    ("ChemometricModel", "BundleChecksum", ua.VariantType.String),
    ("ChemometricModel", "FallbackReason", ua.VariantType.String),
    ("Diagnostics", "Releasable", ua.VariantType.Boolean),
    ("Diagnostics", "OutOfModel", ua.VariantType.Boolean),
    ("Diagnostics", "OutsideRange", ua.VariantType.Boolean),
    ("Diagnostics", "T2", ua.VariantType.Double),
    ("Diagnostics", "T2Limit", ua.VariantType.Double),
    ("Diagnostics", "Q", ua.VariantType.Double),
    ("Diagnostics", "QLimit", ua.VariantType.Double),
    ("Diagnostics", "Stale", ua.VariantType.Boolean),
)


def unit_information(unit: str) -> ua.EUInformation:
    """EUInformation for a unit string: the UNECE code when known, else UnitId -1."""
    code = _UNITS.get(unit.strip())
    eu = ua.EUInformation()
    eu.NamespaceUri = _UNECE
    # OPC UA Part 8: UnitId packs the (up to 3) ASCII characters of the UNECE common code.
    eu.UnitId = int.from_bytes(code.encode(), "big") if code else -1
    eu.DisplayName = ua.LocalizedText(unit)
    eu.Description = ua.LocalizedText(unit)
    return eu


def _nid(identifier: str, ns: int) -> ua.NodeId:
    return ua.NodeId(ua.String(identifier), ua.Int16(ns))


def stream_node_id(instrument: str, group: str, name: str) -> str:
    """String identifier of a stream variable (``<instrument>.Channel1.Stream1.<group>.<name>``)."""
    return f"{instrument}.Channel1.Stream1.{group}.{name}"


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass
class InstrumentNodes:
    """The variables of one instrument's stream and what was last written to the Prediction."""

    prediction: Node
    units: Node
    variables: dict[str, Node]
    unit: str = ""
    last_value: Any = None
    last_status: int = ua.StatusCodes.Good
    last_source: datetime | None = None
    stale: bool = False
    #: ``time.monotonic()`` when the last prediction was written.
    received_at: float = 0.0


class AddressSpace:
    """Builds and updates the nirwatch address space on an asyncua :class:`Server`."""

    def __init__(self, server: Server, ns: int, analysers: Node, health: dict[str, Node]) -> None:
        self.server = server
        self.ns = ns
        self.analysers = analysers
        self.health = health
        self.instruments: dict[str, InstrumentNodes] = {}

    @classmethod
    async def create(cls, server: Server) -> AddressSpace:
        ns = await server.register_namespace(NAMESPACE)
        objects = server.nodes.objects
        analysers = await objects.add_folder(
            _nid("Analysers", ns), ua.QualifiedName("Analysers", ns)
        )
        srv = await objects.add_object(
            _nid("NirwatchServer", ns), ua.QualifiedName("NirwatchServer", ns)
        )
        health = {}
        for name, vt, initial in (
            ("BrokerReachable", ua.VariantType.Boolean, False),
            ("ConsumerLag", ua.VariantType.Int64, 0),
            ("PredictionsReceived", ua.VariantType.UInt64, 0),
        ):
            health[name] = await srv.add_variable(
                _nid(f"NirwatchServer.{name}", ns), ua.QualifiedName(name, ns),
                ua.Variant(initial, vt),
            )  # fmt: skip
        return cls(server, ns, analysers, health)

    async def _instrument(self, instrument: str) -> InstrumentNodes:
        nodes = self.instruments.get(instrument)
        if nodes is not None:
            return nodes
        ns = self.ns

        async def obj(parent: Node, path: str, name: str) -> Node:
            return await parent.add_object(_nid(path, ns), ua.QualifiedName(name, ns))

        device = await obj(self.analysers, instrument, instrument)
        channel = await obj(device, f"{instrument}.Channel1", "Channel1")
        stream = await obj(channel, f"{instrument}.Channel1.Stream1", "Stream1")
        groups = {
            g: await obj(stream, f"{instrument}.Channel1.Stream1.{g}", g)
            for g in ("AcquisitionData", "ChemometricModel", "Diagnostics")
        }
        prediction = await groups["ChemometricModel"].add_variable(
            _nid(stream_node_id(instrument, "ChemometricModel", "Prediction"), ns),
            ua.QualifiedName("Prediction", ns),
            ua.Variant(0.0, ua.VariantType.Double),
            datatype=ua.ObjectIds.Double,
        )
        units = await prediction.add_property(
            _nid(stream_node_id(instrument, "ChemometricModel", "Prediction.EngineeringUnits"), ns),
            ua.QualifiedName("EngineeringUnits", 0),
            unit_information(""),
            datatype=ua.ObjectIds.EUInformation,
        )  # fmt: skip
        variables = {}
        for group, name, vt in _VARIABLES:
            variables[name] = await groups[group].add_variable(
                _nid(stream_node_id(instrument, group, name), ns),
                ua.QualifiedName(name, ns),
                ua.Variant(_INITIAL[vt], vt),
                datatype=_DATATYPES[vt],
            )
        nodes = InstrumentNodes(prediction, units, variables)
        self.instruments[instrument] = nodes
        return nodes

    async def _write(
        self, node: Node, value: Any, vt: ua.VariantType, status: int, source: datetime | None
    ) -> None:
        # A missing value (no interval, no T² for PLS) is BadNoData: asyncua refuses a Null of
        # a typed variable with a Good status, and OPC UA gives a Bad value no value.
        if value is None and ua.StatusCode(ua.UInt32(status)).is_good():
            status = STATUS_NO_VALUE
        dv = ua.DataValue(
            ua.Variant() if value is None else ua.Variant(value, vt),
            ua.StatusCode(ua.UInt32(status)),
            # asyncua types its timestamps as ua.DateTime, a datetime subclass; plain ones work.
            SourceTimestamp=source,  # type: ignore[arg-type]
            ServerTimestamp=datetime.now(UTC),  # type: ignore[arg-type]
        )
        await self.server.write_attribute_value(node.nodeid, dv)

    async def update(self, p: Prediction, received_at: float) -> None:
        """Write one prediction: diagnostics first, the Prediction value last (it is the trigger)."""
        nodes = await self._instrument(p.instrument_id)
        source = _utc(p.timestamp)
        if p.unit != nodes.unit:
            nodes.unit = p.unit
            await self._write(
                nodes.units, unit_information(p.unit), ua.VariantType.ExtensionObject, 0, None
            )
        values: dict[str, Any] = {
            "SpectrumTimestamp": source,
            "SampleId": p.sample_id,
            "MessageId": p.message_id,
            # As the audit trail has it; unknown (BadNoData) from a nirwatch.prediction/1 record.
            "SpectrumSha256": p.spectrum_sha256 or None,
            "Target": p.target,
            "IntervalLow": p.interval_low,
            "IntervalHigh": p.interval_high,
            "ModelName": p.model,
            "ModelVersion": p.model_version,
            "BundleChecksum": p.bundle_checksum,
            "FallbackReason": p.fallback_reason or "",
            "Releasable": p.releasable,
            "OutOfModel": p.out_of_model,
            # The wire record does not say why a value inside the model is not releasable: an
            # extrapolation beyond the calibrated range or an interval wider than allowed.
            "OutsideRange": p.value is not None and not p.releasable and not p.out_of_model,
            "T2": p.t2,
            "T2Limit": p.t2_limit,
            "Q": p.q,
            "QLimit": p.q_limit,
            "Stale": False,
        }
        for _group, name, vt in _VARIABLES:
            await self._write(nodes.variables[name], values[name], vt, 0, source)
        if p.value is None:
            status = STATUS_NO_VALUE
        elif not p.releasable:
            status = STATUS_NOT_RELEASABLE
        else:
            status = ua.StatusCodes.Good
        nodes.last_value, nodes.last_status, nodes.last_source = p.value, status, source
        nodes.stale = False
        nodes.received_at = received_at
        await self._write(nodes.prediction, p.value, ua.VariantType.Double, status, source)

    async def mark_stale(self, instrument: str) -> None:
        """The instrument's last prediction is too old: its value turns Bad (BadOutOfService)."""
        nodes = self.instruments[instrument]
        if nodes.stale:
            return
        nodes.stale = True
        await self._write(
            nodes.variables["Stale"], True, ua.VariantType.Boolean, 0, nodes.last_source
        )
        await self._write(
            nodes.prediction,
            nodes.last_value,
            ua.VariantType.Double,
            STATUS_STALE,
            nodes.last_source,
        )

    async def set_health(self, name: str, value: Any) -> None:
        vt = {"BrokerReachable": ua.VariantType.Boolean, "ConsumerLag": ua.VariantType.Int64}.get(
            name, ua.VariantType.UInt64
        )
        await self._write(self.health[name], value, vt, 0, datetime.now(UTC))


_DATATYPES = {
    ua.VariantType.DateTime: ua.ObjectIds.DateTime,
    ua.VariantType.String: ua.ObjectIds.String,
    ua.VariantType.Double: ua.ObjectIds.Double,
    ua.VariantType.Boolean: ua.ObjectIds.Boolean,
}
_INITIAL: dict[ua.VariantType, Any] = {
    ua.VariantType.DateTime: datetime(1970, 1, 1, tzinfo=UTC),
    ua.VariantType.String: "",
    ua.VariantType.Double: 0.0,
    ua.VariantType.Boolean: False,
}
