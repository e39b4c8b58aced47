using System.CommandLine;

namespace Vfio.Cli;

/// <summary>`list` and `info`: what VFIO devices this host has.</summary>
internal static class DeviceCommands
{
    public static IEnumerable<Command> Create()
    {
        yield break;
    }
}
