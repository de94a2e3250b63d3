"""Stress tests of a running ``seg_node``: ``seg-perception fuzz`` (malformed and good frames,
:mod:`.fuzz`) and ``seg-perception soak`` (synthetic camera streams over minutes, :mod:`.soak`).
Both start the node as a subprocess on loopback DDS and exit 0 when their goal is met."""
