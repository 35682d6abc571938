"""The application layer: settings composition, the plain-Python `ChatService` turn
pipeline, the Gradio UI over it, and the `alterego` command line."""
