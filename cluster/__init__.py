"""kvfleet cluster side: configuration, the demo model and the kvfleet CLI."""
