"""forward3d.geometry"""
