"""A stand-in camera driver for tests: a plain rclpy publisher of ``sensor_msgs/Image`` frames,
started as its own process (with whatever DDS settings its environment gives it, e.g. Fast DDS's
defaults as a real driver has). It publishes until ``--count`` frames were sent or it is stopped.

    python test/camera_driver.py --topic /cam9/image --height 1024 --width 2048 --period 0.5
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--name", default="camera_driver")
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--period", type=float, default=0.5, help="seconds between frames")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument(
        "--qos",
        choices=("default", "sensor_data"),
        default="default",
        help="default: a plain create_publisher(..., 10) (reliable); sensor_data: best effort",
    )
    args = ap.parse_args(argv)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(args.name)
    qos = QoSProfile(depth=10) if args.qos == "default" else qos_profile_sensor_data
    pub = node.create_publisher(Image, args.topic, qos)
    rgb = np.random.default_rng(0).integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)
    msg = Image(height=args.height, width=args.width, encoding="rgb8", step=args.width * 3)
    msg.data = rgb.tobytes()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"publishing {args.height}x{args.width} rgb8 on {args.topic} ({args.qos})", flush=True)
    sent = 0
    while sent < args.count and not stop.is_set():
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
        sent += 1
        stop.wait(args.period)  # the camera's frame period (not a synchronisation)
    print(f"sent {sent} frames", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
