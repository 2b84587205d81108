"""Round-trip time estimates and the retransmission timeout (RTO) derived from them.

RFC 6298's estimator: a smoothed RTT and its mean deviation. Unlike Karn's rule, a reply to a
retransmission is sampled too, timed from the first attempt (an upper bound): a node slower
than its RTO must still get measured, or it would be retried at every request.
The RTO decides when a search stops waiting for a node and asks another one, and when the
request is sent again. It is clamped: never below RTO_MIN (scheduling jitter of busy
processes on one host must not read as loss), never above RTO_MAX (OpenDHT's fixed first
attempt, also the value for a node and an engine that have measured nothing yet).
"""

from __future__ import annotations

from dataclasses import dataclass

ALPHA = 1 / 8           # gain of the smoothed RTT
BETA = 1 / 4            # gain of the deviation
K_VAR = 4               # deviations added to the smoothed RTT
RTO_MIN = 0.05          # s
RTO_MAX = 0.5           # s: the timeout of a first attempt with no estimate


def updated(srtt: float, var: float, sample: float) -> tuple[float, float]:
    """(smoothed RTT, deviation) after one sample; srtt 0 means no sample yet."""
    sample = max(sample, 1e-6)
    if srtt <= 0:
        return sample, sample / 2
    var = (1 - BETA) * var + BETA * abs(srtt - sample)
    return (1 - ALPHA) * srtt + ALPHA * sample, var


def rto(srtt: float, var: float) -> float:
    """The timeout for one estimate; RTO_MAX without one."""
    if srtt <= 0:
        return RTO_MAX
    return min(RTO_MAX, max(RTO_MIN, srtt + K_VAR * var))


@dataclass
class RttEstimate:
    """The engine-wide estimate over every node's samples: the RTO of a node never measured.
    Nodes differ in distance, so the deviation across nodes widens it as it should."""
    srtt: float = 0.0
    var: float = 0.0

    def sample(self, rtt: float) -> None:
        self.srtt, self.var = updated(self.srtt, self.var, rtt)

    def rto(self) -> float:
        return rto(self.srtt, self.var)
