using Vfio.Fuzz;

// vfio-fuzz: the wire decoders under a fuzzer (docs/testing in README.md, "Fuzzing").
//   fuzz TARGET                 the target's loop under afl-fuzz (SharpFuzz's fork server; input on stdin)
//   replay TARGET PATH...       every file (or every file of a folder) once; exit 1 when one breaks the contract
//   seed DIR                    writes the seed corpus into DIR/<target>/ (files already there stay)
return args switch
{
    ["fuzz", var target] => Fuzz(WireTargets.Parse(target)),
    ["replay", var target, .. var paths] when paths.Length > 0 => Replay(WireTargets.Parse(target), paths),
    ["seed", var dir] => Seed(dir),
    _ => Usage(),
};

static int Fuzz(WireTarget target)
{
    var input = new byte[WireContract.MaxFramingInput];
    SharpFuzz.Fuzzer.Run(stream =>
    {
        int n = 0, read;
        while (n < input.Length && (read = stream.Read(input, n, input.Length - n)) > 0) n += read;
        WireContract.Check(target, input.AsSpan(0, n));
    });
    return 0;
}

static int Replay(WireTarget target, string[] paths)
{
    int violations = 0;
    foreach (var file in paths.SelectMany(p => Directory.Exists(p) ? Directory.EnumerateFiles(p) : [p]).Order(StringComparer.Ordinal))
    {
        try { Console.WriteLine($"{file}: {WireContract.Check(target, File.ReadAllBytes(file))}"); }
        catch (ContractViolationException e)
        {
            violations++;
            Console.WriteLine($"{file}: VIOLATION: {e.Message}{(e.InnerException is { } inner ? "\n" + inner : "")}");
        }
    }
    return violations == 0 ? 0 : 1;
}

static int Seed(string dir)
{
    foreach (var s in SeedCorpus.All())
    {
        var folder = Path.Combine(dir, WireTargets.Name(s.Target));
        Directory.CreateDirectory(folder);
        File.WriteAllBytes(Path.Combine(folder, s.Name), s.Bytes);
    }
    return 0;
}

static int Usage()
{
    Console.Error.WriteLine($"usage: vfio-fuzz fuzz TARGET | replay TARGET PATH... | seed DIR  (targets: {string.Join(", ",
        WireTargets.All.Select(WireTargets.Name))})");
    return 2;
}
