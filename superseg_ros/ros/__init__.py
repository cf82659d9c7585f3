"""ROS 2 layer: everything that imports rclpy lives here."""
