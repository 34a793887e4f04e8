@_exported import CapstanTestSupport
