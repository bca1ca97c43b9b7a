"""forward3d.models"""
