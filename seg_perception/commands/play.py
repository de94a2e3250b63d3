"""``seg-perception play BAG``: publish a bag's messages over DDS at the recorded timing.

Messages go out as the bag's CDR bytes (no re-encoding), so headers and payloads are exactly
what was recorded. A user with a ROS 2 installation may equally use ``ros2 bag play``.
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

from seg_perception.cli_paths import ExistingBag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", action=ExistingBag, help="rosbag2 folder or .mcap / .db3 file")
    parser.add_argument("--rate", type=float, default=1.0, help="speed factor (default 1.0)")
    parser.add_argument("--loop", action="store_true", help="start again at the end (Ctrl-C stops)")
    parser.add_argument(
        "--start", type=float, default=0.0, help="skip the first S seconds of the bag"
    )
    parser.add_argument("--topics", nargs="+", default=None, help="only these topics")
    parser.add_argument(
        "--clock",
        action="store_true",
        help="also publish /clock (rosgraph_msgs/Clock) with the bag time",
    )
    parser.add_argument(
        "--wait-subscribers",
        type=float,
        default=2.0,
        help="seconds to wait for subscribers before the first message (2)",
    )


def _messages(bag: Path, topics: list[str] | None, start: float):
    from seg_perception.data.bag_io import read_bag_messages

    first = None
    for topic, msgtype, stamp, raw in read_bag_messages(bag, topics=topics):
        first = stamp if first is None else first
        if (stamp - first) / 1e9 >= start:
            yield topic, msgtype, stamp, raw


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.serialization import serialize_message

    from seg_perception.data.bag_io import bag_topics
    from seg_perception.ros.bridge import loopback_env, play_messages

    bag = Path(args.bag)
    if not bag.exists():
        raise FileNotFoundError(f"bag not found: {bag}")
    if args.rate <= 0:
        raise ValueError(f"--rate must be > 0, got {args.rate}")
    available = bag_topics(bag)
    missing = [t for t in args.topics or [] if t not in available]
    if missing:
        raise ValueError(
            f"{bag}: no topic(s) {', '.join(missing)}; the bag has: {', '.join(sorted(available))}"
        )
    os.environ.update(loopback_env())
    rclpy.init()
    node = rclpy.create_node("seg_play")
    clock_pub = None
    if args.clock:
        from rosgraph_msgs.msg import Clock

        clock_pub = node.create_publisher(Clock, "/clock", 10)

    total = 0
    try:
        passes = itertools.count() if args.loop else range(1)
        for _ in passes:
            messages = list(_messages(bag, args.topics, args.start))
            if clock_pub is not None:
                from rosgraph_msgs.msg import Clock

                def with_clock(msgs=messages):
                    for topic, msgtype, stamp, raw in msgs:
                        clock = Clock()
                        clock.clock.sec, clock.clock.nanosec = divmod(stamp, 1_000_000_000)
                        yield "/clock", "rosgraph_msgs/msg/Clock", stamp, serialize_message(clock)
                        yield topic, msgtype, stamp, raw

                stream = with_clock()
            else:
                stream = iter(messages)
            total += play_messages(
                node, stream, rate=args.rate, wait_subscribers=args.wait_subscribers
            )
            print(f"[play] {bag}: published {total} messages")
    except KeyboardInterrupt:
        print(f"[play] stopped after {total} messages")
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
