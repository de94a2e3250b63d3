"""seg_perception.losses."""
