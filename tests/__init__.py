"""The test suite, a package so that tests import what they share as `from tests.helpers import ...`."""
