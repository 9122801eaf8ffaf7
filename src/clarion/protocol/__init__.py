"""Pure protocol layer: codecs and value types with no I/O and no asyncio.

Everything here is bytes/values in, bytes/values out, so it can be tested with tables and fuzzed
in isolation. Importing asyncio (directly or through another module) is forbidden in this
package; a test enforces it.
"""
