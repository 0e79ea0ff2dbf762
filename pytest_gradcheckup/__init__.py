"""pytest plugin for gradcheckup (fixture, marker and options arrive with the plugin issue).

Importing this package must stay light: it never imports torch at import time.
"""
