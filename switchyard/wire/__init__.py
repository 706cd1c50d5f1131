"""Pure parsers and builders of what crosses the wire, shared by matchers and targets."""
