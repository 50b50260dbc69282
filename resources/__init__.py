"""Files the app reads at run time (styles, icons, catalog), loaded with importlib.resources."""
