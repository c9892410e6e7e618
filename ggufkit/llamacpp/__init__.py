"""The pinned llama.cpp: its source (never committed), the CMake build, binary discovery, runners."""
