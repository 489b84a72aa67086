"""CUP bookings (issue 5): nothing yet."""
